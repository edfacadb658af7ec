"""Old home of :mod:`mcdrop.engine.masks`, kept while :mod:`mcdrop._sampling` imports it.

``_sampling`` moves into the engine next; until then it (and code written against the old
layout) reads the masks through this re-export. New code imports ``mcdrop.engine.masks``.
"""

from __future__ import annotations

from mcdrop.engine.masks import (
    _NUMPY_MIN,
    _keep_mask_np,
    _keep_mask_torch,
    hash32,
    hash32_py,
    keep_mask,
    unit_keys,
    unit_keys_many,
)

__all__ = [
    "_NUMPY_MIN",
    "_keep_mask_np",
    "_keep_mask_torch",
    "hash32",
    "hash32_py",
    "keep_mask",
    "unit_keys",
    "unit_keys_many",
]
