"""VisionZip kernels: dominant-token scores and the dominant + contextual selection of one batch.

VisionZip (Yang et al., CVPR 2025, https://arxiv.org/abs/2412.04467) keeps, per frame, the tokens
the encoder attends to most (*dominant*) and folds the rest into a few *contextual* tokens chosen
by key similarity. These functions are pure tensor code on a batch whose rows are frames: the
strategy wrapper (``visionzip.py``) gets the encoder tensors and maps the result onto the token
carrier. They reproduce the authors' selection arithmetic, so the
golden fixtures match to the index; what differs is only what cannot change a result on those
fixtures: scores and similarities in float32 whatever the model dtype, ties broken towards the
lowest index (stable sorts and first-maximum argmax instead of top-k's unspecified order), key
normalisation that maps an all-zero key to zero instead of NaN, and budgets validated up front
instead of the reference's shape errors, silent token duplication and division by zero.

Shapes: ``B`` frames, ``N`` tokens per frame (CLS + patches for CLIP towers), ``H`` heads,
``dh`` head width, ``D`` feature width, ``K`` dominant budget, ``C`` contextual budget,
``R = N - K`` tokens left after the dominant step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as nnf
from torch import Tensor

__all__ = [
    "Selection",
    "dominant_scores_cls",
    "cls_row_from_qk",
    "dominant_scores_mean_received",
    "mean_received_from_attention",
    "split_heads",
    "select",
]

MergeMode = Literal["reference", "mean"]

_EPS = 1e-12
"""Floor of the key norm. Any real key norm is far above it, so ``k / max(|k|, eps)`` equals the
reference's ``k / |k|`` bit for bit; only an all-zero key changes (zero instead of NaN)."""


@dataclass(frozen=True)
class Selection:
    """Every intermediate of one VisionZip selection, named as in the golden fixtures.

    Kept whole (not just ``output_tokens``) because the fixture tests check each stage, and the
    carrier needs the index sets to rebuild positions, sources and sizes.
    """

    selected_indices_score_order: Tensor
    """``[B, K]`` long: what the reference returns as its keep-index (CLS first, then by score)."""
    dominant_indices: Tensor
    """``[B, K]`` long: the same set, ascending; the order of the dominant output rows."""
    dominant_tokens: Tensor
    """``[B, K, D]``: ``X`` at ``dominant_indices`` (copies, bit-equal to the input rows)."""
    remaining_indices: Tensor
    """``[B, R]`` long: positions not taken as dominant, ascending."""
    target_local_indices: Tensor
    """``[C]`` long: targets as indices into the remaining list (same stride for every frame)."""
    target_indices: Tensor
    """``[B, C]`` long: original positions of the targets."""
    merge_indices: Tensor
    """``[B, R - C]`` long: the other remaining positions, ascending (empty when ``C = 0``)."""
    assignment: Tensor
    """``[B, R - C]`` long: contextual slot ``0..C-1`` each merged token joins."""
    member_counts: Tensor
    """``[B, C]`` long: merged tokens per slot (not clamped; 0 for a target nobody joined)."""
    contextual_tokens: Tensor
    """``[B, C, D]``: the merged tokens, in target order."""
    output_tokens: Tensor
    """``[B, K + C, D]``: ``[dominant (ascending position)] ++ [contextual (target order)]``."""


# ------------------------------------------------------------------------------------------ scores


def dominant_scores_cls(attn_cls_row: Tensor) -> Tensor:
    """``[B, N-1]`` float32 patch scores from the CLS query row ``[B, H, N-1]`` of layer ℓ.

    Summed over heads, not averaged: the ranking is the same, and the sum is what the reference
    stores, so the fixture's ``selection_score`` matches bit for bit.
    """
    if attn_cls_row.dim() != 3:
        raise ValueError(f"expected the CLS attention row [B, H, N-1], got shape {tuple(attn_cls_row.shape)}")
    return attn_cls_row.float().sum(dim=1)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, N, H*dh]`` projection output to ``[B, H, N, dh]``, the layout attention uses."""
    b, n, width = x.shape
    if width % num_heads:
        raise ValueError(f"width {width} does not split into {num_heads} heads")
    return x.view(b, n, num_heads, width // num_heads).transpose(1, 2)


def cls_row_from_qk(q_cls: Tensor, k: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """``[B, H, N-1]`` CLS attention probabilities over the patch keys, recomputed from q and k.

    Fused attention (SDPA, FlashAttention) never materialises probabilities, and forcing the
    whole tower onto eager attention costs every layer ``N×N`` memory. Only the CLS query row is
    needed: ``softmax(scale · q_cls · Kᵀ)`` over **all** ``N`` keys (CLS included, as the
    softmax normalises over them), then column 0 dropped. O(H·N·dh) per frame; matches eager
    probabilities up to rounding (within 3e-7 on the ``e2e_`` fixture).

    ``q_cls`` ``[B, H, dh]`` is the CLS token's query (all queries ``[B, H, N, dh]`` are accepted
    too; row 0 is used), ``k`` ``[B, H, N, dh]`` all keys (bias included, unscaled); ``scale`` is
    the layer's logit scale, ``dh ** -0.5`` for CLIP/SigLIP. ``mask`` ``[B or 1, 1, N]`` is added
    to the logits (``-inf`` on keys the CLS query cannot see), None for none.
    """
    if q_cls.dim() == 4:
        q_cls = q_cls[:, :, 0]
    if q_cls.dim() != 3 or k.dim() != 4 or q_cls.shape[:2] != k.shape[:2] or q_cls.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q_cls [B, H, dh] and k [B, H, N, dh], got {tuple(q_cls.shape)}, {tuple(k.shape)}"
        )
    logits = torch.matmul(q_cls.float()[:, :, None, :], k.float().transpose(-1, -2)) * scale  # [B, H, 1, N]
    if mask is not None:
        logits = logits + mask[:, None, :1]
    return torch.softmax(logits, dim=-1)[:, :, 0, 1:]


def dominant_scores_mean_received(
    q: Tensor, k: Tensor, scale: float, chunk_size: int = 256, mask: Tensor | None = None
) -> Tensor:
    """``[B, N]`` float32 attention each token receives, averaged over heads and query rows.

    The community variant for CLS-free towers (SigLIP in LLaVA-OneVision, as HoliTom's and
    DyToK's ports do); it is not the authors' reference. Every row's
    softmax is needed, so query rows go through in blocks of ``chunk_size``: peak memory is
    ``B·H·chunk_size·N`` floats instead of ``B·H·N·N``.

    ``q``, ``k`` ``[B, H, N, dh]`` (bias included, unscaled, positioned as the layer uses them).
    ``mask`` ``[B or 1, N, N]`` is added to the logits (``-inf`` where a query cannot see a key,
    e.g. outside its attention window); such keys receive 0 from that query, and the mean still
    runs over all ``N`` query rows.
    """
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(
            f"expected q and k of one shape [B, H, N, dh], got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    qf, kt = q.float(), k.float().transpose(-1, -2)
    b, h, n, _ = qf.shape
    received = torch.zeros(b, h, n, dtype=torch.float32, device=q.device)
    for start in range(0, n, chunk_size):
        logits = torch.matmul(qf[:, :, start : start + chunk_size], kt).mul_(scale)  # [B, H, c, N]
        if mask is not None:  # in place: the same values as out of place, one block buffer fewer
            logits.add_(mask[:, None, start : start + chunk_size])
        received += torch.softmax(logits, dim=-1).sum(dim=2)
    return received.mean(dim=1) / n


def mean_received_from_attention(attn: Tensor) -> Tensor:
    """``[B, N]`` the same score from materialised probabilities ``[B, H, N, N]`` (rows = queries).

    For callers that already hold eager attention weights (and for the ``nocls_`` fixture,
    which stores them): mean over heads, then over query rows, as the community ports compute it.
    """
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention [B, H, N, N], got shape {tuple(attn.shape)}")
    return attn.float().mean(dim=1).mean(dim=1)


# --------------------------------------------------------------------------------------- selection


def _check_budgets(n: int, dominant: int, contextual: int, has_cls: bool) -> None:
    """Refuse budgets the reference would crash on or silently mishandle."""
    if dominant < 1:
        raise ValueError(f"dominant = {dominant}: at least 1 dominant token is required (it includes CLS)")
    if contextual < 0:
        raise ValueError(f"contextual = {contextual} must not be negative")
    if has_cls and dominant - 1 > n - 1:
        raise ValueError(
            f"dominant = {dominant} asks for the CLS token plus {dominant - 1} patches, but a frame has only "
            f"{n - 1} patches (top-k of dominant - 1 > P)"
        )
    if dominant > n:
        raise ValueError(f"dominant = {dominant} is larger than the {n} tokens a frame has")
    remaining = n - dominant
    if contextual > remaining:
        raise ValueError(
            f"contextual = {contextual} is larger than the {remaining} tokens left after dominant = {dominant} "
            f"(R = N - dominant = {n} - {dominant}); lower contextual or dominant so that "
            f"dominant + contextual <= {n}"
        )


def select(
    x: Tensor,
    score: Tensor,
    kbar: Tensor,
    dominant: int,
    contextual: int,
    has_cls: bool,
    merge: MergeMode = "reference",
) -> Selection:
    """VisionZip on a batch of frames: ``dominant`` kept tokens plus ``contextual`` merged tokens.

    ``x`` ``[B, N, D]`` are the tokens to select from (layer ℓ's output in the reference),
    ``score`` ``[B, N-1]`` (``has_cls``: patch scores, CLS excluded) or ``[B, N]`` (no CLS),
    ``kbar`` ``[B, N, dh]`` the head-averaged keys of layer ℓ (the similarity metric).

    With ``has_cls`` the dominant budget includes the CLS token (position 0, always kept) and
    ``dominant - 1`` patches compete; without it all ``N`` tokens compete for ``dominant``
    slots. ``contextual = 0`` keeps only the dominant tokens (the remaining ones are dropped,
    as DyToK does; the reference divides by zero). ``dominant + contextual > N`` is refused
    (``ValueError`` naming both fields) instead of the reference's crash or duplicated token.

    ``merge="reference"`` builds each contextual token as ``x[target] + mean(x[members])``
    (the authors' arithmetic: the target is *not* part of the mean, so a joined target roughly
    doubles in magnitude); ``merge="mean"`` is the true mean of target and members that some
    ports use, an explicit opt-in because results change.
    """
    _check_inputs(x, score, kbar, has_cls, merge)
    b, n, d = x.shape
    _check_budgets(n, dominant, contextual, has_cls)
    sel, dom, dom_tokens, rest = _dominant(x, score, dominant, has_cls)
    c = contextual
    if c == 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=x.device)
        return Selection(
            selected_indices_score_order=sel,
            dominant_indices=dom,
            dominant_tokens=dom_tokens,
            remaining_indices=rest,
            target_local_indices=torch.zeros(0, dtype=torch.long, device=x.device),
            target_indices=empty,
            merge_indices=empty,
            assignment=empty,
            member_counts=empty,
            contextual_tokens=x.new_zeros(b, 0, d),
            output_tokens=dom_tokens,
        )
    t_local, targets, members = _targets(rest, c)
    assignment, counts = _assign(kbar, targets, members)
    ctx = _merge(x, targets, members, assignment, counts, merge)
    return Selection(
        selected_indices_score_order=sel,
        dominant_indices=dom,
        dominant_tokens=dom_tokens,
        remaining_indices=rest,
        target_local_indices=t_local,
        target_indices=targets,
        merge_indices=members,
        assignment=assignment,
        member_counts=counts,
        contextual_tokens=ctx,
        output_tokens=torch.cat([dom_tokens, ctx], dim=1),
    )


def _check_inputs(x: Tensor, score: Tensor, kbar: Tensor, has_cls: bool, merge: str) -> None:
    """Refuse mismatched shapes and unknown merge modes up front, naming what was expected, instead
    of a broadcasting error deep in the selection."""
    if x.dim() != 3 or kbar.dim() != 3 or x.shape[:2] != kbar.shape[:2]:
        raise ValueError(
            f"expected x [B, N, D] and kbar [B, N, dh], got {tuple(x.shape)}, {tuple(kbar.shape)}"
        )
    if merge not in ("reference", "mean"):
        raise ValueError(f"merge must be 'reference' or 'mean', got {merge!r}")
    b, n = x.shape[:2]
    want = (b, n - 1) if has_cls else (b, n)
    if tuple(score.shape) != want:
        raise ValueError(
            f"score must have shape {want} ({'patches only' if has_cls else 'all tokens'}), got {tuple(score.shape)}"
        )


def _dominant(
    x: Tensor, score: Tensor, dominant: int, has_cls: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The dominant step: ``sel`` ``[B, K]`` (score order, CLS first), ``dom`` ``[B, K]`` (ascending),
    their tokens ``[B, K, D]`` and the remaining positions ``rest`` ``[B, R]`` (ascending).

    A stable descending sort is top-k with ties going to the lowest index, so the choice is
    deterministic where the reference's top-k order is unspecified.
    """
    b, n, d = x.shape
    dev = x.device
    positions = torch.arange(n, device=dev)
    k_top = dominant - 1 if has_cls else dominant
    order = torch.sort(score.float(), dim=1, descending=True, stable=True).indices[:, :k_top]
    if has_cls:
        sel = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=dev), order + 1], dim=1)
    else:
        sel = order
    dom = torch.sort(sel, dim=1).values
    dom_tokens = torch.gather(x, 1, dom[..., None].expand(b, dominant, d))

    keep = torch.ones(b, n, dtype=torch.bool, device=dev)
    keep.scatter_(1, sel, False)
    r = n - dominant
    rest = positions.expand(b, n)[keep].view(b, r)  # row-major masking keeps positions ascending
    return sel, dom, dom_tokens, rest


def _targets(rest: Tensor, c: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``c`` contextual targets, strided over the *remaining list* (not over the image grid) as
    the reference does: ``t_local`` ``[C]`` into ``rest``, ``targets`` ``[B, C]`` and the other
    remaining positions ``members`` ``[B, R - C]``, both as original positions."""
    r = rest.shape[1]
    dev = rest.device
    step = max(1, r // c)
    t_local = torch.arange(0, r, step, device=dev)[:c]
    is_target = torch.zeros(r, dtype=torch.bool, device=dev)
    is_target[t_local] = True
    m_local = torch.arange(r, device=dev)[~is_target]
    return t_local, rest[:, t_local], rest[:, m_local]


def _assign(kbar: Tensor, targets: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
    """Each member's slot ``[B, R - C]`` (the target with the most similar normalised key, first
    maximum winning) and the member count of each slot ``[B, C]``, from ``kbar`` ``[B, N, dh]``."""
    b, c = targets.shape
    kn = nnf.normalize(kbar.float(), dim=-1, eps=_EPS)
    kt = torch.gather(kn, 1, targets[..., None].expand(b, c, kn.shape[-1]))
    km = torch.gather(kn, 1, members[..., None].expand(b, members.shape[1], kn.shape[-1]))
    # per-sample matmuls keep every frame's result independent of the others in the batch
    sim = torch.stack(
        [x.clone() @ y.clone().T for x, y in zip(km, kt, strict=True)]
    )  # [B, R-C, C] cosine similarity
    assignment = torch.argmax(sim, dim=2)  # first maximum wins
    counts = torch.zeros(b, c, dtype=torch.long, device=targets.device).scatter_add_(
        1, assignment, torch.ones_like(assignment)
    )
    return assignment, counts


def _merge(
    x: Tensor, targets: Tensor, members: Tensor, assignment: Tensor, counts: Tensor, merge: MergeMode
) -> Tensor:
    """The contextual tokens ``[B, C, D]`` in ``x``'s dtype, summed in at least float32 so a bf16
    model's merge does not lose members: ``x[target] + mean(members)`` (reference) or the mean of
    target and members (``merge="mean"``)."""
    b, c = targets.shape
    d = x.shape[2]
    dev = x.device
    work = torch.promote_types(x.dtype, torch.float32)
    xt = torch.gather(x, 1, targets[..., None].expand(b, c, d)).to(work)
    xm = torch.gather(x, 1, members[..., None].expand(b, members.shape[1], d)).to(work)
    slot = (assignment + torch.arange(b, device=dev)[:, None] * c).reshape(-1)
    summed = (
        torch.zeros(b * c, d, dtype=work, device=dev).index_add_(0, slot, xm.reshape(-1, d)).view(b, c, d)
    )
    if merge == "reference":
        ctx = xt + summed / counts.clamp(min=1)[..., None].to(work)
    else:
        ctx = (xt + summed) / (counts + 1)[..., None].to(work)
    return ctx.to(x.dtype)
