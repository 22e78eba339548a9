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

from tokencompress import (
    ChunkInfo,
    PerFrameParams,
    Registrar,
    ScoringPruner,
    Stage,
    StageInfo,
    VisualTokens,
    hookimpl,
)

__all__ = [
    "UniformGrid",
    "UniformGridParams",
    "keep_rank",
    "lattice_shape",
    "r2_rank",
    "tokencompress_register_strategies",
]

__version__ = "0.1.0"


_PLASTIC = 1.32471795724474602596
"""Root of x^3 = x + 1; its inverse powers give the most evenly spread 2-D Kronecker sequence (R2)."""
_OVERSAMPLE = 64


def lattice_shape(rows: int, cols: int, k: int) -> tuple[int, int]:
    """Lattice rows and columns ``(a, b)``, ``a * b <= k``, for a ``rows`` x ``cols`` grid.

    Minimises the coarser of the two strides (``rows / a``, ``cols / b``), so the lattice is as
    square as the grid allows rather than as large as possible: on 14x14 a budget of 60 gets
    7x8 (strides 2 and 1.75), not 6x10 (2.33 and 1.4). Ties go to more points, then fewer rows.
    """
    if k < 1:
        raise ValueError(f"budget must be >= 1, got {k}")

    def cost(a: int) -> tuple[float, int, int]:
        b = min(cols, k // a)
        return max(rows / a, cols / b), -a * b, a

    a = min(range(1, min(rows, k) + 1), key=cost)
    return a, min(cols, k // a)


def r2_rank(rows: int, cols: int) -> Tensor:
    """``[rows*cols]`` long: a budget-free spread-out order of the grid's cells (0 first).

    Point ``n`` of the R2 sequence (M. Roberts, 2018) is ``frac(1/2 + n * (1/g, 1/g^2))`` with
    ``g`` the plastic number; a cell's rank is the first ``n`` that lands in it, so every prefix
    of the order is spread over the whole frame and no two cells tie. 64 points per cell hit
    every cell of the grids models produce; a cell never hit would rank last, row-major.
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


def keep_rank(rows: int, cols: int, k: int) -> Tensor:
    """``[rows*cols]`` long: the order in which ``uniform_grid`` keeps a frame's cells (0 first).

    The ``a * b`` cells of :func:`lattice_shape` come first: one per band of ``rows / a`` rows
    and ``cols / b`` columns, at the band centres, so a budget that factors well (4, 49 on
    14x14) is an exact, centred lattice. The ``k - a * b`` left over, and the order among
    tokens when an earlier strategy already removed some lattice cells, follow
    :func:`r2_rank`, which spreads them instead of piling them into the first rows.
    """
    a, b = lattice_shape(rows, cols, k)
    r = (2 * torch.arange(a) + 1) * rows // (2 * a)
    c = (2 * torch.arange(b) + 1) * cols // (2 * b)
    off_lattice = torch.ones(rows * cols, dtype=torch.long)
    off_lattice[(r[:, None] * cols + c[None, :]).reshape(-1)] = 0
    key = off_lattice * (rows * cols) + r2_rank(rows, cols)
    return torch.argsort(torch.argsort(key))


class UniformGridParams(PerFrameParams):
    tokens_per_frame: int = Field(60, ge=1, description="tokens kept per frame, spread evenly over the grid")


class UniformGrid(ScoringPruner):
    """Keeps ``tokens_per_frame`` tokens per frame on a uniform lattice, ignoring their content."""

    name = "uniform_grid"
    stage = Stage.PRE_PREFILL
    Params = UniformGridParams
    summary = "Uniform lattice: keep per frame the tokens on an evenly spread grid (content-blind baseline)"

    params: UniformGridParams

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        return {"tokens_per_frame": max(1, info.tokens_per_frame // 4)}

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Tensor:
        """Earlier in :func:`keep_rank` scores higher; ``pos`` keeps it right after other pruners too."""
        rank = keep_rank(*tokens.grid, self.params.tokens_per_frame).to(tokens.tokens.device)
        return -rank[tokens.local_index()].double()


@hookimpl
def tokencompress_register_strategies(registrar: Registrar) -> None:
    registrar.add_strategy(UniformGrid)
