"""InfiniPot-V's scoring and selection on one layer's vision tokens (the memory is in
:mod:`tokencompress.strategies.infinipot_v`).

Inputs are one layer's cached vision keys and values ``[kvh, V, d]`` (V = N frames x ``tpf`` tokens,
frame-major, keys as the cache holds them: post-RoPE); the result is, per KV head, the ``C * tpf``
kept indices (ascending) and the intermediate scores. Scores are computed in float32 whatever the
cache dtype (quirk Q9's fix; identical in float32) and selections are deterministic (Q8's fix: a
higher score first, then the lower index).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Budgets", "Selection", "budgets", "tar_scores", "van_scores", "select", "pooling_of_layer"]

POOL_ND = (3, 2, 1, -1)
POOL_KERNEL = (7, 5, 3, 1)
"""Adaptive pooling per layer group (quarter of the layers): 3-D, 2-D, 1-D, none."""


@dataclass(frozen=True)
class Budgets:
    """One compression's budgets, in tokens except ``recent`` (frames)."""

    keep: int
    van: int
    tar: int
    recent: int
    past: int
    """TaR picks among the past tokens (``tar - recent * tpf``); negative: the reference would crash."""


@dataclass(frozen=True)
class Selection:
    kept: Tensor
    """``[kvh, keep]`` int64 kept indices into the vision part, ascending."""
    tar_score: Tensor | None
    """``[kvh, (N - R) * tpf]`` TaR score of every past token (None when ``tar_ratio`` is 0)."""
    tar_selected: Tensor | None
    """``[kvh, tar]`` the TaR set (best past tokens and every recent one), ascending."""
    van_score: Tensor
    """``[kvh, V]`` value norms after the optional pooling."""
    budgets: Budgets


def budgets(frames: int, keep_frames: int, tpf: int, tar_ratio: float, query_ratio: float) -> Budgets:
    """The reference's budgets, evaluated as it does (Python floats; ``round`` is half to even, Q3;
    ``int`` truncates the float product, Q4)."""
    keep = keep_frames * tpf
    van = round(((1 - tar_ratio) * keep_frames) * tpf)
    tar = keep - van
    recent = int(frames * query_ratio) if tar_ratio > 0 else 0
    return Budgets(keep, van, tar, recent, tar - recent * tpf)


def _top(scores: Tensor, k: int) -> Tensor:
    """``[kvh, k]`` indices of the ``k`` largest scores per row: higher first, ties to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]


def tar_scores(keys: Tensor, tpf: int, recent: int) -> Tensor:
    """``[kvh, (N - R) * tpf]``: minus the mean cosine of each past token with the token at the same
    position ``j mod tpf`` of each of the ``R`` most recent frames (eps 1e-9 added to the norms)."""
    kvh, v, d = keys.shape
    x = keys.float()
    x = x / (x.norm(dim=-1, keepdim=True) + 1e-9)
    cut = v - recent * tpf
    past = x[:, :cut].reshape(kvh, cut // tpf, tpf, d)
    rec = x[:, cut:].reshape(kvh, recent, tpf, d)
    dots = torch.einsum("hfsd,hrsd->hrfs", past, rec)  # [kvh, R, N - R, tpf]
    return -(dots.sum(dim=1) / recent).reshape(kvh, cut)


def pooling_of_layer(layer: int, num_layers: int) -> tuple[int, int]:
    """``(nd, kernel)`` of adaptive pooling at ``layer``; the group index is clamped to the last group
    (Q6: the reference indexes past its 4-entry table when the layer count is not a multiple of 4)."""
    group = min(layer // max(1, num_layers // 4), 3)
    return POOL_ND[group], POOL_KERNEL[group]


def van_scores(
    values: Tensor, tpf: int, nd: int = -1, kernel: int = 1, rows: int | None = None, count_pad: bool = True
) -> Tensor:
    """``[kvh, V]`` value L2 norms, average-pooled (stride 1, zero padding ``kernel // 2``) over
    (T, H, W) for ``nd`` 3, over each frame's (H, W) grid for ``nd`` 2 (kernel limited by T, H, W and
    made odd; under 2 no pooling), over the flattened token axis for ``nd`` 1; ``nd`` -1: none.
    ``count_pad`` counts the zero padding in the average, as the reference (Q7)."""
    van = values.float().norm(dim=-1)
    kvh, v = van.shape
    if nd in (2, 3):
        t = v // tpf
        h = rows if rows is not None else tpf
        w = tpf // h
        k = min(kernel, t, h, w)
        k = k - 1 if k % 2 == 0 else k
        if k < 2:
            return van
        grid = van.reshape(kvh, t, h, w)
        pool = F.avg_pool3d if nd == 3 else F.avg_pool2d
        return pool(grid, k, stride=1, padding=k // 2, count_include_pad=count_pad).reshape(kvh, v)
    if nd == 1:
        pad = kernel // 2
        return F.avg_pool1d(van[:, None], kernel, stride=1, padding=pad, count_include_pad=count_pad)[:, 0]
    return van


def select(
    keys: Tensor,
    values: Tensor,
    tpf: int,
    keep_frames: int,
    tar_ratio: float,
    query_ratio: float,
    pooling: tuple[int, int] = (-1, 1),
    rows: int | None = None,
    count_pad: bool = True,
) -> Selection:
    """One layer's compression to ``keep_frames`` frames' worth of tokens per KV head:
    the TaR set (least redundant past tokens and every recent frame), then the largest value norms
    among the rest. The caller checks ``N > keep_frames`` and the budgets (``Budgets.past >= 0``)."""
    frames = keys.shape[1] // tpf
    b = budgets(frames, keep_frames, tpf, tar_ratio, query_ratio)
    van = van_scores(values, tpf, *pooling, rows=rows, count_pad=count_pad)
    tar = chosen = None
    if tar_ratio > 0:
        tar = tar_scores(keys, tpf, b.recent)
        past = tar.shape[1]
        recent = torch.arange(past, keys.shape[1], device=keys.device).expand(keys.shape[0], -1)
        chosen = torch.sort(torch.cat((_top(tar, b.past), recent), dim=1), dim=1).values
        rest = van.scatter(1, chosen, float("-inf"))  # the TaR set is kept whatever its value norm
        picks = _top(rest, b.van)
        kept = torch.cat((chosen, picks), dim=1)
    else:
        kept = _top(van, b.keep)
    return Selection(torch.sort(kept, dim=1).values, tar, chosen, van, b)
