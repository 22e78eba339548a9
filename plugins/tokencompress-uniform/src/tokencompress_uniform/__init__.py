"""Example tokencompress plugin: ``uniform_grid`` keeps each frame's tokens on an even lattice.

It exists for two reasons. It is the smallest complete plugin (one strategy, one hook, one
entry point), so it doubles as the template the README walks through. And a content-blind
pruner that still covers the whole frame is the baseline a learned pruner has to beat at the
same budget: if STC-Pruner keeps 60 tokens per frame, ``uniform_grid`` with 60 tells you how
much of its score comes from *which* tokens it picks rather than from how many.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from tokencompress import ChunkInfo, ScoringPruner, Stage, StrategyParams, VisualTokens, hookimpl
from tokencompress.hooks import Registrar

__all__ = ["UniformGrid", "UniformGridParams", "lattice_rank", "tokencompress_register_strategies"]

__version__ = "0.1.0"


_PLASTIC = 1.32471795724474602596
"""Root of x^3 = x + 1; its inverse powers give the most evenly spread 2-D Kronecker lattice (R2)."""
_OVERSAMPLE = 64


def lattice_rank(rows: int, cols: int) -> Tensor:
    """``[rows*cols]`` long: the order in which to keep the positions of a row-major grid (0 first).

    Point ``n`` of the R2 sequence (M. Roberts, 2018) is ``frac(1/2 + n * (1/g, 1/g^2))`` with
    ``g`` the plastic number: a rank-1 lattice whose every prefix covers the unit square
    almost as evenly as a square lattice of that size would. A cell's rank is the first ``n``
    that lands in it, so for *any* budget ``k`` the first ``k`` cells are spread over the
    whole frame, a smaller budget keeps a subset of a larger one, and the choice depends on
    the grid shape only: deterministic, no ties, no dependence on the budget or on content.
    Point 0 is the centre, so a budget of one keeps the middle token. Sampling 64 points per
    cell hits every cell of the grids a model produces; one never hit would rank last, in
    row-major order.
    """
    cells = rows * cols
    samples = _OVERSAMPLE * cells
    n = torch.arange(samples, dtype=torch.float64)
    y = torch.frac(0.5 + n / _PLASTIC)
    x = torch.frac(0.5 + n / _PLASTIC**2)
    cell = (y * rows).long() * cols + (x * cols).long()
    first = torch.full((cells,), samples, dtype=torch.long)
    first = first.scatter_reduce(0, cell, torch.arange(samples), reduce="amin")
    return torch.argsort(torch.argsort(first, stable=True))


class UniformGridParams(StrategyParams):
    tokens_per_frame: int = Field(60, ge=1, description="tokens kept per frame, spread evenly over the grid")


class UniformGrid(ScoringPruner):
    """Keeps ``tokens_per_frame`` tokens per frame on a uniform lattice, ignoring their content."""

    name = "uniform_grid"
    stage = Stage.PRE_PREFILL
    Params = UniformGridParams
    summary = "Uniform lattice: keep per frame the tokens on an evenly spread grid (content-blind baseline)"

    params: UniformGridParams

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Tensor:
        """Earlier in :func:`lattice_rank` scores higher; ``pos`` keeps this right after other pruners."""
        rank = lattice_rank(*tokens.grid).to(tokens.tokens.device)
        return -rank[tokens.local_index()].double()


@hookimpl
def tokencompress_register_strategies(registrar: Registrar) -> None:
    registrar.add_strategy(UniformGrid)
