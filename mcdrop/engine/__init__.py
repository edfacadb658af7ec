"""The MC dropout engine: :class:`~mcdrop.engine.predictor.MCPredictor` and its parts.

Modules, lowest first (the import-linter contract in ``pyproject.toml`` keeps the order)::

    masks      counter-based keyed dropout masks (seed, sample, site, element)
    config     EngineConfig: the options, validated once; Task / Precision / SplitMode
    inputs     user inputs -> checked tensors (the one finiteness check)
    prefix     the deterministic prefix: layers before the first dropout, run once
    plan       Plan (what one forward pass looks like) and Group (one request's state)
    forward    one keyed forward pass over (group, sample range) segments
    summaries  per-task accumulators and summaries (RegressionSummary, ClassSummary)
    planner    finds and caches a Plan per input signature
    runner     chunks, out-of-memory halving, folding; RunStats for tests
    adaptive   samples="auto": rounds until the MC standard error is small enough
    exact      exact=True: all 2^n subnetworks with their probabilities
    shard      samples of one call spread over several devices
    requests   predict_many: merging requests and handing back their rows
    predictor  MCPredictor, the facade

This package's ``__init__`` imports nothing, so that ``mcdrop._sampling`` (which reads
the masks) can load without pulling in the rest of the engine.
"""
