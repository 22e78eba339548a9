"""VisionZip: per frame, keep the tokens the encoder attends to most and fold the rest into a few.

VisionZip (Yang et al., CVPR 2025, https://arxiv.org/abs/2412.04467) is text-agnostic and runs
once per frame between the vision encoder and the projector. The arithmetic lives in
:mod:`.visionzip_select` (checked against the authors' reference on the golden fixtures); this
module obtains its inputs from the model and maps the result onto the token carrier.

Inputs without eager attention. The reference reads layer ℓ's attention probabilities, which
fused kernels never materialise. The framework instead captures layer ℓ's *input* (a forward
pre-hook, ``chunk.probes``) and this strategy recomputes only what it needs through the target's
block adapter: ``k = adapter.k(adapter.ln1(h))`` for the head-averaged key metric, and either the
CLS query's softmax row (CLIP-style towers) or, for CLS-free towers (SigLIP), the attention every
token receives averaged over heads and query rows, computed in query blocks (the community
LLaVA-OneVision variant of HoliTom/DyToK, not the authors' reference).
The logits are the layer's own: the adapter positions queries and keys (``adapter.positioned``:
the vision RoPE on Qwen towers) and masks what a query cannot see (``adapter.logit_mask``: keys
outside its window in Qwen2.5-VL's windowed blocks, which then receive 0 from it; the mean still
runs over all query rows of the frame). The key metric stays the un-rotated keys (content only).

Where it runs (``placement``):

* ``before_pool``: at ``post_vit``, on the encoder tokens. Only where the target's ``post_vit`` is
  not count-locked: LLaVA-OneVision's bilinear pooling needs the full grid, so it is refused
  there at build time.
* ``after_pool``: at ``pre_prefill``, on the pooled, projected tokens, as DyToK
  (``pooling=True``) and HoliTom do: the score map and the keys are computed on the ViT grid and
  carried to the pooled grid with the target's own pooling map (``chunk.to_prefill_grid``;
  on Qwen towers the mean over the 2×2 merge block of ViT tokens that the merger folds into
  one LLM token, so a merged token's score is the mean of its four patches' scores).
* ``auto``: ``before_pool`` where ``post_vit`` is not count-locked, otherwise ``after_pool``; the
  pipeline reports the move in ``BoundPipeline.notes``.

The carrier never holds a CLS token (targets drop it before ``post_vit``), so on the carrier all
``dominant`` slots go to grid tokens: with a CLS tower the CLS row still ranks the patches, but
the CLS token itself is not emitted (the reference keeps and projects it, counting it in
``dominant``). Budgets are per frame; frames never interact.

Output order: the reference emits ``[dominant (ascending position)] ++ [contextual (target
order)]``. The carrier keeps rows in raster order of their representative position (a dominant
token's own position, a contextual token's target position), so the same set of vectors comes
out in a different order, and positions, sources and sizes stay aligned for the target.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.errors import BudgetError, CompatibilityError
from ..api.strategy import StrategyParams, TokenStrategy, encoder_layer_index
from ..api.tokens import VisualTokens
from ..api.types import Capability, ChunkInfo, LayerProbe, Stage, StageInfo
from .visionzip_select import (
    Selection,
    cls_row_from_qk,
    dominant_scores_cls,
    dominant_scores_mean_received,
    select,
    split_heads,
)

__all__ = ["VisionZip", "VisionZipParams"]

_QUERY_BLOCK = 256
"""Query rows per softmax block of the mean-received score (bounds memory at B·H·256·N floats)."""


class VisionZipParams(StrategyParams):
    dominant: int = Field(
        42,
        ge=1,
        description=(
            "dominant tokens kept per frame, those the encoder attends to most. The default 42 + 7 is "
            "DyToK's LLaVA-OneVision split of the 196-token pooled frame (6:1). With a CLS tower the "
            "reference counts CLS in this budget; the carrier holds no CLS, so here every slot is a grid token"
        ),
    )
    contextual: int = Field(
        7,
        ge=0,
        description="contextual tokens per frame, each a target plus the mean of the leftovers most like it; "
        "0 keeps only the dominant tokens",
    )
    layer: int = Field(
        -1,
        description=(
            "encoder layer (index into the target's ViT layers; negative counts from the end) whose attention "
            "and keys are used. The reference uses the penultimate layer of the full tower, which is -1 on "
            "LLaVA-OneVision (its SigLIP tower already lacks the last layer) and -2 on a full CLIP tower; it "
            "should be the layer whose output the target feeds on"
        ),
    )
    score: Literal["auto", "cls", "mean_received"] = Field(
        "auto",
        description=(
            "cls: the CLS query's attention summed over heads (the authors' reference); mean_received: the "
            "attention each token receives, averaged over heads and queries (the community variant for "
            "CLS-free towers such as SigLIP); auto: cls when the probed layer has a CLS token, else mean_received"
        ),
    )
    merge: Literal["reference", "mean"] = Field(
        "reference",
        description="reference: contextual = target + mean(members), the authors' arithmetic; mean: the true "
        "mean of target and members (an opt-in deviation; results change)",
    )
    placement: Literal["auto", "before_pool", "after_pool"] = Field(
        "auto",
        description=(
            "before_pool: select on the encoder tokens at post_vit (only where the target's post_vit keeps no "
            "full-grid pooling); after_pool: select on the pooled, projected tokens at pre_prefill, the score map "
            "and keys pooled like the features; auto: before_pool where possible, else after_pool"
        ),
    )


class VisionZip(TokenStrategy):
    """Keeps ``dominant`` attended tokens and ``contextual`` merged tokens per frame (VisionZip)."""

    name = "visionzip"
    stage = Stage.POST_VIT
    Params = VisionZipParams
    needs = frozenset({Capability.ATTENTION, Capability.KEYS})
    summary = (
        "VisionZip: keep the most-attended tokens per frame, merge the rest into a few by key similarity"
    )
    paper = "https://arxiv.org/abs/2412.04467"
    reference = "dvlab-research/VisionZip (visionzip/utils.py)"

    params: VisionZipParams

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        """DyToK's 49-of-729 share split 6:1, scaled to ``info``'s frame.

        The matrix passes the *declared* stage's layout (``post_vit``), while on pooled targets the
        strategy runs on a grid about 4x smaller, so the share is taken of the encoder grid
        (49/729 of it still fits the 196-token pooled frame).
        """
        total = max(2, info.tokens_per_frame * 49 // 729)
        contextual = max(1, total // 7)
        return {"dominant": max(1, total - contextual), "contextual": contextual}

    def __init__(self, params: StrategyParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        if self.params.score == "cls":
            # an explicit CLS score is meaningless on a CLS-free tower: refuse it at build time
            self.needs = frozenset(type(self).needs | {Capability.CLS_TOKEN})

    # ------------------------------------------------------------------ declarations
    def resolve_layer(self, num_layers: int) -> int:
        """``params.layer`` as a non-negative index into ``num_layers`` encoder layers."""
        return encoder_layer_index(self.name, self.params.layer, num_layers)

    def probe_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.resolve_layer(num_layers),)

    def effective_stage(self, infos: dict[Stage, StageInfo]) -> Stage:
        placement = self.params.placement
        if placement == "before_pool":
            return Stage.POST_VIT
        if placement == "after_pool":
            return Stage.PRE_PREFILL
        post = infos.get(Stage.POST_VIT)
        return Stage.POST_VIT if post is not None and not post.count_locked else Stage.PRE_PREFILL

    def per_frame(self, tokens_per_frame: int) -> tuple[int, int]:
        """(dominant, contextual) for a frame of ``tokens_per_frame`` tokens.

        The build-time :meth:`check` refuses budgets larger than the target's frames; a frame made
        smaller by an earlier strategy of the same stage is clamped instead (dominant first, then
        contextual to what is left), a documented deviation from the reference, which crashes or
        duplicates a token there.
        """
        k = min(self.params.dominant, tokens_per_frame)
        return k, min(self.params.contextual, tokens_per_frame - k)

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        return sum(self.per_frame(tokens_per_frame)) * frames

    def check(self, info: StageInfo) -> None:
        k, c, t = self.params.dominant, self.params.contextual, info.tokens_per_frame
        where = f"at {info.stage.value} on this model"
        if k > t:
            raise BudgetError(
                f"{self.name}.dominant = {k} is larger than the {t} tokens a frame has {where}; use at most {t}"
            )
        if k + c > t:
            raise BudgetError(
                f"{self.name}.dominant + {self.name}.contextual = {k} + {c} = {k + c} is larger than the {t} tokens "
                f"a frame has {where}; lower contextual to at most {t - k}"
            )

    # ---------------------------------------------------------------------- inputs
    def _probe(self, chunk: ChunkInfo) -> LayerProbe:
        """The captured input of the configured layer.

        Probes are keyed by non-negative index; a negative ``layer`` needs the tower depth, which
        a probe may carry (``num_layers``). Without it, ``-1`` is the deepest probed layer (no
        index can exceed this strategy's own ``L - 1``), and a lone probe is ours.
        """
        probes = chunk.probes
        if not probes:
            raise RuntimeError(
                f"{self.name}: no encoder-layer probe in this chunk; run it through a pipeline (which installs "
                f"the probe on layer {self.params.layer}) or fill chunk.probes yourself"
            )
        layer = self.params.layer
        if layer >= 0:
            index = layer
        else:
            depth = getattr(next(iter(probes.values())), "num_layers", None)
            if depth:
                index = self.resolve_layer(int(depth))
            elif layer == -1 or len(probes) == 1:
                index = max(probes) if layer == -1 else next(iter(probes))
            else:
                raise RuntimeError(
                    f"{self.name}.layer = {layer}: several layers are probed and the tower depth is unknown; "
                    f"give a non-negative layer index"
                )
        if index not in probes:
            raise RuntimeError(
                f"{self.name}: layer {index} was not probed in this chunk (have {sorted(probes)})"
            )
        return probes[index]

    def grid_maps(self, probe: LayerProbe, vit_tokens: int | None = None) -> tuple[Tensor, bool]:
        """``([F, T_vit, 1 + dh] float32, has_cls)``: the score and the head-mean keys per grid token.

        Channel 0 is the dominant score, channels 1.. the key metric ``kbar``, both on the ViT grid
        (a CLS token, when the layer has one, is used for scoring and then dropped). Packing them
        lets one pooling call carry both to a pooled grid. ``vit_tokens`` is the ViT grid size when
        known; otherwise a square grid is assumed to tell a leading CLS token from a patch.
        """
        h = probe.hidden
        adapter = probe.adapter
        t_enc = h.shape[1]
        if vit_tokens is None and getattr(adapter, "cls_tokens", None) is not None:
            vit_tokens = t_enc - adapter.cls_tokens
        if vit_tokens is None:
            vit_tokens = t_enc if math.isqrt(t_enc) ** 2 == t_enc else t_enc - 1
        extra = t_enc - vit_tokens
        if extra not in (0, 1):
            raise RuntimeError(
                f"{self.name}: layer input has {t_enc} tokens per frame for a {vit_tokens}-token grid; "
                f"expected the grid, or the grid plus one CLS token"
            )
        has_cls = extra == 1
        mode = self.params.score
        if mode == "auto":
            mode = "cls" if has_cls else "mean_received"
        if mode == "cls" and not has_cls:
            raise CompatibilityError(
                f"{self.name}.score = 'cls' needs a CLS token, but the probed layer has none "
                f"({t_enc} tokens for a {vit_tokens}-token grid); use score: mean_received or auto"
            )
        x = adapter.ln1(h)
        heads = adapter.num_heads
        scale = adapter.head_dim**-0.5
        k_flat = adapter.k(x)  # [F, T_enc, H*dh]
        # the key metric is content only: head-mean keys before any rotary
        kbar = split_heads(k_flat, heads).float().mean(dim=1)  # [F, T_enc, dh]
        # logits as the layer computes them: the adapter positions q/k (rotary) and masks (windows)
        if mode == "cls":
            cls_index = torch.zeros(h.shape[0], 1, dtype=torch.long, device=h.device)
            q_cls, k = adapter.positioned(adapter.q(x[:, :1]), k_flat, cls_index)
            mask = adapter.logit_mask(cls_index)
            score = dominant_scores_cls(cls_row_from_qk(q_cls[:, :, 0], k, scale, mask))  # [F, T_enc - 1]
        else:
            q, k = adapter.positioned(adapter.q(x), k_flat)
            mask = adapter.logit_mask()
            score = dominant_scores_mean_received(q, k, scale, _QUERY_BLOCK, mask)[:, extra:]
        return torch.cat([score[..., None], kbar[:, extra:]], dim=-1), has_cls

    # ----------------------------------------------------------------------- apply
    def apply(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> VisualTokens:
        if tokens.count == 0:
            return tokens
        with torch.no_grad():
            probe = self._probe(chunk)
            t_enc, grid_tokens = probe.hidden.shape[1], tokens.tokens_per_frame_in
            on_vit_grid = t_enc in (grid_tokens, grid_tokens + 1)
            maps, _ = self.grid_maps(probe, grid_tokens if on_vit_grid else None)
            if not on_vit_grid:
                if chunk.to_prefill_grid is None:
                    raise CompatibilityError(
                        f"{self.name}: the tokens lie on a {tokens.grid[0]}x{tokens.grid[1]} grid, not the encoder's, "
                        f"and this target gives no map to carry scores and keys there (placement after_pool)"
                    )
                maps = chunk.to_prefill_grid(maps)
            if maps.shape[:2] != (tokens.num_frames, grid_tokens):
                raise RuntimeError(
                    f"{self.name}: score/key maps have shape {tuple(maps.shape[:2])}, the tokens need "
                    f"({tokens.num_frames}, {grid_tokens})"
                )
            rows = maps[tokens.frame - tokens.first_frame, tokens.local_index()]  # [N, 1 + dh]
            return self._select_rows(tokens, rows[:, 0], rows[:, 1:])

    def _select_rows(self, tokens: VisualTokens, score: Tensor, kbar: Tensor) -> VisualTokens:
        """Run the kernel per frame (one batch when frames hold equal counts) and rebuild the carrier."""
        counts = tokens.counts()
        starts = torch.cumsum(counts, 0) - counts
        batches: list[tuple[Tensor, Selection]] = []  # (row offsets [B], selection)
        if bool((counts == counts[0]).all()):
            n = int(counts[0])
            f = tokens.num_frames
            k, c = self.per_frame(n)
            x, sc, kb = tokens.tokens.view(f, n, -1), score.view(f, n), kbar.reshape(f, n, -1)
            sel = select(x, sc, kb, k, c, has_cls=False, merge=self.params.merge)
            batches.append((starts, sel))
        else:
            for fi in range(tokens.num_frames):
                n, s = int(counts[fi]), int(starts[fi])
                if n == 0:
                    continue
                k, c = self.per_frame(n)
                rows = slice(s, s + n)
                x, sc, kb = tokens.tokens[rows][None], score[rows][None], kbar[rows][None]
                sel = select(x, sc, kb, k, c, has_cls=False, merge=self.params.merge)
                batches.append((starts[fi : fi + 1], sel))

        if all(sel.target_indices.shape[1] == 0 for _, sel in batches):  # contextual = 0: plain pruning
            keep = torch.cat([(sel.dominant_indices + off[:, None]).reshape(-1) for off, sel in batches])
            return tokens.take(torch.sort(keep).values)

        dev = tokens.tokens.device
        group = torch.full((tokens.count,), -1, dtype=torch.long, device=dev)
        anchors, merged = [], []
        g0 = 0
        for off, sel in batches:
            b, k = sel.dominant_indices.shape
            c = sel.target_indices.shape[1]
            per = k + c
            base = g0 + torch.arange(b, device=dev)[:, None] * per  # [B, 1] first group id per frame
            dom = sel.dominant_indices + off[:, None]
            group[dom.reshape(-1)] = (base + torch.arange(k, device=dev)).reshape(-1)
            anchor = [dom]
            if c:
                tgt = sel.target_indices + off[:, None]
                group[tgt.reshape(-1)] = (base + k + torch.arange(c, device=dev)).reshape(-1)
                group[(sel.merge_indices + off[:, None]).reshape(-1)] = (base + k + sel.assignment).reshape(
                    -1
                )
                anchor.append(tgt)
            anchors.append(torch.cat(anchor, dim=1).reshape(-1))
            merged.append(sel.output_tokens.reshape(b * per, -1))
            g0 += b * per
        dropped = group < 0
        if bool(dropped.any()):
            # a frame clamped to contextual = 0 drops its leftovers before the others merge
            kept = torch.nonzero(~dropped).squeeze(1)
            tokens = tokens.take(kept)
            group = group[kept]
            remap = torch.full((dropped.numel(),), -1, dtype=torch.long, device=dev)
            remap[kept] = torch.arange(kept.numel(), device=dev)
            anchors = [remap[a] for a in anchors]
        return tokens.merge(group, tokens=torch.cat(merged), anchor=torch.cat(anchors))
