"""Opt-in prepacked decoder linears on CPU (``stream.decoder_kernels: packed``).

A stock ``nn.Linear`` on CPU repacks its weight for the GEMM kernel on every call, a cost that does
not shrink with the rows: a visual chunk pruned to 60 tokens pays it in full (measured on the bench
preset's Qwen2-0.5B widths: its decoder linears take 0.62 of the stock time at 60 rows, 0.77 at
196). Packing each weight once (:mod:`tokencompress.kernels.packed_linear`) removes it. The result agrees
with the stock layer to float32 rounding, not bit for bit, so it is a stream setting that the
baseline of a benchmark shares, never a silent default.

The linears inside the decoder's layers get an instance ``forward`` for the ``with`` block (the
embedding and the vocabulary head are left alone); on exit the modules are exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from ..kernels.packed_linear import PackedLinears
from .overrides import Overrides

__all__ = ["packed_decoder_linears"]


def _decoder_linears(decoder: nn.Module) -> list[nn.Linear]:
    layers = getattr(decoder, "layers", None)
    if layers is None:
        return []
    return [m for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)]


@contextmanager
def packed_decoder_linears(decoder: nn.Module | None, active: bool = True) -> Iterator[int]:
    """Route every linear of ``decoder.layers`` through one :class:`PackedLinears` (owned by
    this block) while the block runs; yields how many linears were routed."""
    linears = _decoder_linears(decoder) if (active and decoder is not None) else []
    packs = PackedLinears()
    overrides = Overrides("packed")

    def make(linear: nn.Linear) -> Any:
        def forward(_self: nn.Linear, x: Tensor) -> Tensor:
            return packs((linear,), x)

        return forward

    try:
        for linear in linears:
            overrides.forward(linear, make(linear))
        yield len(linears)
    finally:
        overrides.restore()
