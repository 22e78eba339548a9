"""Linear layers on prepacked weights, for the few-row matrix multiplies of sparse recompute.

A stock ``nn.Linear`` on CPU repacks its weight into the GEMM kernel's blocked layout on every
call. That cost does not shrink with the row count, so a layer run for 182 of 729 tokens pays
it in full and runs at about half the per-FLOP speed of the full layer. oneDNN can pack a
weight once (``torch.ops.mkldnn._reorder_linear_weight``, what torch.compile's freezing uses),
fuse a residual add into the product, and run several linears that share an input as one
(their weights stacked). The result agrees with the stock one to float32 rounding (about 1e-6
relative), not bit for bit, so only paths that are not bit-exact by contract use it.

Packs are kept by the object that asks for them (never in a global) and rebuilt when a weight
changes (its storage or its in-place version counter).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PackedLinears", "packing_available"]


def packing_available(weight: Tensor) -> bool:
    """Whether this build and tensor can use a oneDNN-packed weight (CPU float32, mkldnn built in)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinears:
    """``packs(modules, x, add=None)`` = ``cat([m(x) for m in modules], -1) + add``, on packed weights.

    ``x`` ``[..., in]``; ``add`` ``[..., out]`` (optional, fused into the product). Falls back to
    the stock modules where packing is unavailable or autograd is recording.
    """

    def __init__(self) -> None:
        self._packs: dict[tuple[int, ...], tuple[tuple[tuple[int, int], ...], Tensor, Tensor | None]] = {}

    def __call__(self, modules: tuple[nn.Linear, ...], x: Tensor, add: Tensor | None = None) -> Tensor:
        weights = [m.weight for m in modules]
        w0 = weights[0]
        if (
            not packing_available(w0)
            or x.dtype != w0.dtype
            or x.device != w0.device
            or (torch.is_grad_enabled() and w0.requires_grad)
        ):
            y = torch.cat([m(x) for m in modules], -1) if len(modules) > 1 else modules[0](x)
            return y if add is None else add + y
        ids = tuple(id(m) for m in modules)
        key = tuple((w.data_ptr(), w._version) for w in weights)
        got = self._packs.get(ids)
        if got is None or got[0] != key:
            got = self._packs[ids] = (key, *self._pack(modules))
        _, packed, bias = got
        lead, width = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, width)
        if add is None:
            y = torch.ops.mkldnn._linear_pointwise(x2, packed, bias, "none", [], "")
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(
                x2, add.reshape(x2.shape[0], -1), packed, bias, "add"
            )
        return y.view(*lead, y.shape[-1])

    @staticmethod
    def _pack(modules: tuple[nn.Linear, ...]) -> tuple[Tensor, Tensor | None]:
        w = (
            torch.cat([m.weight.detach() for m in modules])
            if len(modules) > 1
            else modules[0].weight.detach()
        )
        if all(m.bias is None for m in modules):
            bias = None
        else:
            bias = torch.cat(
                [
                    m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                    for m in modules
                ]
            )
        return torch.ops.mkldnn._reorder_linear_weight(w, None), bias
