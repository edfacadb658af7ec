"""Inter-layer dropout of multi-layer ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` under MC mode.

torch applies this dropout inside its fused recurrent kernel, with its own random numbers
and only in train mode. In MC mode each such module instead runs its layers one at a time
(the same fused kernel, one layer per call, no dropout inside) and applies ``F.dropout``
between them, which the sampling context routes to keyed, batch-independent masks like
every other site. The arithmetic per layer is torch's own, so with the masks fixed the
output equals torch's up to float rounding.

Not covered: ``PackedSequence`` inputs (their rows are interleaved by time step, so masks
cannot be keyed per row); those calls run torch's eval path and warn.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from mcdrop import _sampling

__all__ = ["UnsampledDropoutWarning", "samples_between_layers", "patch_rnns", "unpatch_rnns"]


class UnsampledDropoutWarning(UserWarning):
    """A dropout with p > 0 that MC mode does not sample (its variance is missing)."""


_KERNELS: dict[str, Any] = {
    "LSTM": _VF.lstm,
    "GRU": _VF.gru,
    "RNN_TANH": _VF.rnn_tanh,
    "RNN_RELU": _VF.rnn_relu,
}


def samples_between_layers(m: nn.Module) -> bool:
    """Whether ``m`` is a recurrent module with inter-layer dropout to sample."""
    return (
        isinstance(m, nn.RNNBase)
        and m.num_layers > 1
        and m.dropout > 0
        and getattr(m, "mode", None) in _KERNELS
    )


def _initial_state(m: nn.RNNBase, x: torch.Tensor, hx: Any, batched: bool) -> list[torch.Tensor]:
    """[h0] or [h0, c0], each (L * D, N, H)."""
    d = 2 if m.bidirectional else 1
    n = x.shape[1]
    if hx is None:
        h_size = m.proj_size if m.proj_size > 0 else m.hidden_size
        states = [x.new_zeros(m.num_layers * d, n, h_size)]
        if m.mode == "LSTM":
            states.append(x.new_zeros(m.num_layers * d, n, m.hidden_size))
        return states
    states = list(hx) if m.mode == "LSTM" else [hx]
    return [s if batched else s.unsqueeze(1) for s in states]


def layerwise_forward(self: nn.RNNBase, input: Any, hx: Any = None) -> Any:
    """``forward`` of a recurrent module that samples the dropout between its layers."""
    cls_forward = type(self).forward
    if _sampling.current_context() is None:
        return cls_forward(self, input, hx)
    if isinstance(input, PackedSequence):
        warnings.warn(
            f"{type(self).__name__} got a PackedSequence: its inter-layer dropout "
            f"(p={self.dropout}) is not sampled in MC mode; pass padded tensors instead",
            UnsampledDropoutWarning,
            stacklevel=2,
        )
        return cls_forward(self, input, hx)
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
    if self.batch_first:
        x = x.transpose(0, 1)  # (T, N, F): the kernel runs time-major below
    states = _initial_state(self, x, hx, batched)
    d = 2 if self.bidirectional else 1
    weights = self._flat_weights
    per_layer = len(weights) // self.num_layers
    kernel = _KERNELS[self.mode]
    finals: list[list[torch.Tensor]] = [[] for _ in states]
    out = x
    for layer in range(self.num_layers):
        if layer > 0:
            # Rows first, so that keyed masks are drawn per row; routed through the context.
            out = F.dropout(out.transpose(0, 1), self.dropout, True).transpose(0, 1)
        w = weights[layer * per_layer : (layer + 1) * per_layer]
        init = [s[layer * d : (layer + 1) * d] for s in states]
        h = tuple(init) if self.mode == "LSTM" else init[0]
        res = kernel(out, h, w, self.bias, 1, 0.0, False, self.bidirectional, False)
        out = res[0]
        for i, s in enumerate(res[1:]):
            finals[i].append(s)
    if self.batch_first:
        out = out.transpose(0, 1)
    last = [torch.cat(f, 0) for f in finals]
    if not batched:
        out = out.squeeze(0 if self.batch_first else 1)
        last = [s.squeeze(1) for s in last]
    return out, (last[0], last[1]) if self.mode == "LSTM" else last[0]


def patch_rnns(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> list[nn.Module]:
    """Give each recurrent module with inter-layer dropout the layer-wise forward.

    ``modules``: ``list(model.modules())`` when the caller has walked the model already.
    """
    patched: list[nn.Module] = []
    for m in model.modules() if modules is None else modules:
        if isinstance(m, nn.RNNBase) and samples_between_layers(m) and "forward" not in m.__dict__:
            m.forward = types.MethodType(layerwise_forward, m)
            patched.append(m)
    return patched


def unpatch_rnns(patched: list[nn.Module]) -> None:
    for m in patched:
        m.__dict__.pop("forward", None)
