"""StreamingTOM's Causal Temporal Reduction (CTR): a fixed budget per frame, static tokens merged.

StreamingTOM (Chen, Tao, Shao and Wang, CVPR 2026, https://arxiv.org/abs/2510.18269; reference
``YIGE24/StreamingTOM``, ``streamingtom/modules/ctr.py``) cuts every frame's pooled visual tokens
to ``tokens_per_frame`` (``G``) before the LLM prefill, using only the current and the previous
frame. Stage: ``pre_prefill``. Input ``[F·N, D]`` on the carrier (``N`` tokens per frame on the
target's pooled grid; 196 on LLaVA-OneVision, one Qwen temporal slice per frame on the Qwen
targets), output exactly ``F·G`` rows, each frame's rows in raster order. The per-frame
arithmetic is :mod:`.streamingtom_ctr_reduce` (reference-exact on the golden fixtures):

* tokens whose cosine to the same position of the previous *raw* frame is above
  ``similarity_threshold`` are static, the others dynamic; ``floor(G · n_static / N)`` slots go to
  the static tokens, the rest to the dynamic ones;
* static tokens are clustered with DPC-kNN (``k`` neighbours); the centres stay, each other static
  token is merged into its nearest centre: ``beta · centre + (1 − beta) · mean(members)``;
* dynamic tokens are ranked by saliency, the attention each ViT token receives in the probed
  encoder layer (mean over heads and queries), carried to the pooled grid by the target's own map.

**Saliency without eager attention.** The reference computes the last SigLIP layer's softmax in
its own attention module. Two sources here (``saliency_source``), both without switching the
tower to eager attention:

* ``recompute`` (default): the pipeline captures the input of encoder layer ``layer`` (a forward
  pre-hook, ``chunk.probes``, as for VisionZip) and the strategy recomputes
  ``softmax(q kᵀ / √d)`` with the layer's own norm and projections through the target's block
  adapter, in query blocks; the tower keeps its fused attention. A second pass over one layer's
  q/k projections and ``QKᵀ`` per frame: on LLaVA-OneVision-7B's SigLIP about 5 GFLOP a frame.
* ``tower``: the pipeline *taps* that one layer (``attention_taps``): while a chunk runs, in the
  stream's own thread, the layer computes its attention explicitly (``softmax(QKᵀ·scale)·V`` in
  query blocks) and takes the probabilities' column sums on the way, so the saliency costs no
  extra FLOPs. The tower's output equals the stock one up to float rounding (the explicit softmax
  replaces the fused kernel in that layer only). Where a ``pre_vit_block`` strategy computes that
  layer itself (STC-Cacher computes every layer), the tap does not run and the saliency is
  recomputed as with ``recompute``.

Rotary and attention windows (Qwen towers) are applied as the layer applies them; a CLS row (CLIP
towers) attends but its own column is dropped. The map reaches the carrier's grid through ``chunk.to_prefill_grid``
(LLaVA-OneVision: the same bilinear 27×27 → 14×14 resize as the features, as the reference does;
Qwen: the mean over each 2×2 merge block, the reference's unused Qwen branch; LLaVA-NeXT-Video:
its average pooling).

**Carrier.** Dynamic picks are kept rows (bit-identical copies); a centre becomes a merged row
whose members are the static tokens that joined it (``sizes`` = 1 + members) and which stands at
the centre's grid position, so on the Qwen targets it keeps the centre's (t, h, w) M-RoPE id and
the centre's DeepStack features. Static tokens that get no slot and unpicked dynamic tokens are
dropped. CTR needs every token of a frame (it compares positions with the previous frame), so it
refuses a carrier an earlier strategy already cut.

**Streaming.** The state is the last raw frame of the previous chunk (``[N, D]``): frame 0 of a
chunk is compared with it, and only the first frame of a stream is all dynamic. It changes only
after a chunk went through, so a failed chunk leaves the stream as it was. With the default noise
(seeded by stream frame index) a stream gives the same tokens however it is chunked.

Options (every field of :class:`StreamingTomCtrParams`): ``tokens_per_frame`` (``G``, default 50),
``similarity_threshold`` (τ, 0.9), ``k`` (7), ``beta`` (0.6), ``layer`` (-1), ``dpc_delta``,
``noise``, ``seed``, ``saliency_source``.

Quirks of the reference (Q-numbers of the method spec's quirk list, which the fixture README in
``tests/fixtures/streamingtom/`` accompanies):

1. (Q1) DPC's ``delta`` is the distance to the nearest token of *lower* density; reproduced by
   default, ``dpc_delta: higher`` is textbook DPC-kNN (changes the centres).
2. (Q2) the density counts the self-distance among the ``k`` nearest, with ``torch.cdist``'s
   default compute mode: reproduced.
3. (Q3) the reference draws ``1e-6 · U[0, 1)`` density noise from the global RNG on every call
   (not reproducible, shared with everything else). Fixed without changing results beyond
   near-ties: the draw comes from a generator seeded by (``seed``, stream frame index);
   ``noise: none`` adds none (exact ties then go to the lower position).
4. (Q4) the budget clamps can never fire for ``G ≤ N``; dropped, and ``G > N`` is refused at build
   time (a frame smaller than ``G`` met at run time keeps everything).
5. (Q5) 196 tokens per frame hard-coded: ``N`` is taken from the carrier's grid.
6. (Q6) static slots use floor: with ``G · n_static < N`` static tokens get no slot and are
   dropped. Reproduced.
7. (Q7) merged feature ``beta · centre + (1 − beta) · mean(members)`` in the model dtype (member
   sum in float32); a centre without members is unchanged. Reproduced.
8. (Q8) the reference's saliency is a chunked two-pass softmax returned in fp16; here an exact
   float32 softmax (fixture tolerance rel. 1e-4), so fp16 ties of the reference may resolve
   differently.
9. (Q9) cosine through ``F.normalize`` (eps 1e-12): a zero token has similarity 0, so it is
   dynamic. Reproduced.
10. ``torch.topk``'s tie order (centre scores, saliency) is implementation-defined in the
    reference; here higher score first, then lower position (the fixtures accept either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.errors import BudgetError, CompatibilityError
from ..api.strategy import StrategyParams, TokenStrategy, encoder_layer_index
from ..api.tokens import VisualTokens
from ..api.types import Capability, ChunkInfo, LayerProbe, Stage, StageInfo
from ..kernels.attention_received import QUERY_BLOCK
from .streamingtom_ctr_reduce import FrameReduction, Noise, normalized_rows, reduce_frame, static_masks
from .visionzip_select import dominant_scores_mean_received

__all__ = ["StreamingTomCtr", "StreamingTomCtrParams", "StreamingTomCtrState", "CtrPlan"]

_QUERY_BLOCK = QUERY_BLOCK
"""Query rows per softmax block of the recomputed saliency (bounds memory at F·H·256·T floats)."""


class StreamingTomCtrParams(StrategyParams):
    tokens_per_frame: int = Field(
        50, ge=1, description="G: tokens kept in every frame (the reference's CTR_RETAIN_TOKENS, 50 of 196)"
    )
    similarity_threshold: float = Field(
        0.9,
        ge=0,
        le=1,
        description="tau: a token is static when its cosine to the same position of the previous frame is "
        "strictly above this",
    )
    k: int = Field(7, ge=1, description="neighbours (self included) of the DPC-kNN density of static tokens")
    beta: float = Field(
        0.6,
        ge=0,
        le=1,
        description="weight of the centre in a merged static token (the members' mean gets 1-beta)",
    )
    layer: int = Field(
        -1,
        description="encoder layer (index into the target's ViT layers; negative counts from the end) whose "
        "attention gives the saliency. The reference uses the last layer of LLaVA-OneVision's tower (-1, "
        "the layer whose output feeds the projector); use the feature layer of other towers (-2 on LLaVA-NeXT-Video)",
    )
    dpc_delta: Literal["lower", "higher"] = Field(
        "lower",
        description="lower: DPC delta = distance to the nearest token of lower density (the reference, quirk Q1); "
        "higher: textbook DPC-kNN (nearest token of higher density), an opt-in that changes the centres",
    )
    noise: Literal["reference", "none"] = Field(
        "reference",
        description="reference: add 1e-6 * U[0,1) to the DPC densities as the reference does, drawn from a "
        "generator seeded by (seed, stream frame index) instead of the global RNG; none: add nothing",
    )
    seed: int = Field(0, ge=0, description="seed of the DPC density noise (noise: reference)")
    saliency_source: Literal["recompute", "tower"] = Field(
        "recompute",
        description="recompute: the probed layer's q/k and softmax are computed a second time from its input; "
        "tower: that layer computes its own attention explicitly and hands over each token's received "
        "attention from the same pass (no extra FLOPs; the tower's output equal up to float rounding)",
    )


@dataclass
class StreamingTomCtrState:
    """One stream's memory: the last raw (uncompressed) frame seen, ``[N, D]``, None at the start.

    ``normed``: (that frame, its :func:`normalized_rows` ``[N, D]`` float32), so the next chunk's
    first cosines reuse the rows the last chunk normalised; used only while its first element *is*
    ``last_frame`` (a state whose frame was replaced by hand normalises it again).
    """

    last_frame: Tensor | None = None
    normed: tuple[Tensor, Tensor] | None = None


@dataclass(frozen=True)
class CtrPlan:
    """One chunk's decision, computed without touching the state.

    ``static_mask`` ``[F, N]``; ``frames``: one :class:`FrameReduction` per frame; ``last_frame``
    ``[N, D]`` and its normalised rows ``last_normed`` (float32): what :meth:`StreamingTomCtr.commit` stores.
    """

    static_mask: Tensor
    frames: tuple[FrameReduction, ...]
    last_frame: Tensor
    last_normed: Tensor | None = None

    @property
    def kept_positions(self) -> Tensor:
        """``[F, G]`` grid positions of the output rows."""
        return torch.stack([f.kept for f in self.frames])

    @property
    def from_static(self) -> Tensor:
        return torch.stack([f.from_static for f in self.frames])

    @property
    def static_budgets(self) -> Tensor:
        return torch.tensor([f.static_budget for f in self.frames])


class StreamingTomCtr(TokenStrategy):
    """Keeps ``tokens_per_frame`` per frame: static tokens clustered and merged, dynamic ones by saliency."""

    name = "streamingtom_ctr"
    stage = Stage.PRE_PREFILL
    Params = StreamingTomCtrParams
    needs = frozenset({Capability.ATTENTION})
    stateful = True
    summary = (
        "StreamingTOM CTR: per frame, static tokens (vs the previous frame) clustered and merged by DPC-kNN, "
        "dynamic ones kept by ViT saliency; a fixed budget per frame"
    )
    paper = "https://arxiv.org/abs/2510.18269"
    reference = "YIGE24/StreamingTOM (streamingtom/modules/ctr.py)"

    params: StreamingTomCtrParams

    @classmethod
    def conformance_params(cls, info: StageInfo) -> dict[str, Any]:
        """The reference's 50 of 196, scaled to ``info``'s frame."""
        return {"tokens_per_frame": max(1, info.tokens_per_frame * 50 // 196)}

    # ------------------------------------------------------------------ declarations
    def planned_count(self, tokens_per_frame: int, frames: int) -> int:
        return min(self.params.tokens_per_frame, tokens_per_frame) * frames

    def check(self, info: StageInfo) -> None:
        g, t = self.params.tokens_per_frame, info.tokens_per_frame
        if g > t:
            raise BudgetError(
                f"{self.name}.tokens_per_frame = {g} is larger than the {t} tokens a frame has at "
                f"{info.stage.value} on this model; use at most {t}"
            )

    def resolve_layer(self, num_layers: int) -> int:
        """``params.layer`` as a non-negative index into ``num_layers`` encoder layers."""
        return encoder_layer_index(self.name, self.params.layer, num_layers)

    def probe_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.resolve_layer(num_layers),)

    def attention_taps(self, num_layers: int) -> tuple[int, ...]:
        return (self.resolve_layer(num_layers),) if self.params.saliency_source == "tower" else ()

    def new_state(self) -> StreamingTomCtrState:
        return StreamingTomCtrState()

    def copy_state(self, state: StreamingTomCtrState) -> StreamingTomCtrState:
        # the tensors are replaced, never written in place
        return StreamingTomCtrState(state.last_frame, state.normed)

    # ---------------------------------------------------------------------- saliency
    def _probe(self, chunk: ChunkInfo) -> LayerProbe:
        probes = chunk.probes
        if not probes:
            raise RuntimeError(
                f"{self.name}: no encoder-layer probe in this chunk; run it through a pipeline (which installs "
                f"the probe on layer {self.params.layer}) or pass the saliency to plan() yourself"
            )
        depth = getattr(next(iter(probes.values())), "num_layers", 0)
        if depth:
            index = self.resolve_layer(int(depth))
        elif self.params.layer == -1 or len(probes) == 1:
            index = max(probes) if self.params.layer == -1 else next(iter(probes))
        else:
            index = self.params.layer
        if index not in probes:
            raise RuntimeError(
                f"{self.name}: layer {index} was not probed in this chunk (have {sorted(probes)})"
            )
        return probes[index]

    def vit_saliency(self, probe: LayerProbe, grid_tokens: int) -> Tensor:
        """``[F, T]`` float32: the attention every ViT grid token receives in the probed layer, averaged
        over heads and over every query row (a CLS row attends; its own column is dropped). With
        ``saliency_source: tower`` it is the tapped layer's own ``probe.received`` when present."""
        h, adapter = probe.hidden, probe.adapter
        t_enc = h.shape[1]
        cls = getattr(adapter, "cls_tokens", None)
        if cls is None:
            cls = 0 if t_enc == grid_tokens or math.isqrt(t_enc) ** 2 == t_enc else 1
        if self.params.saliency_source == "tower" and probe.received is not None:
            return probe.received[:, cls:]
        x = adapter.ln1(h)
        q, k = adapter.positioned(adapter.q(x), adapter.k(x))  # heads [F, H, T, d], rotary applied
        mask = adapter.logit_mask()
        return dominant_scores_mean_received(q, k, adapter.head_dim**-0.5, _QUERY_BLOCK, mask)[:, cls:]

    def saliency(self, tokens: VisualTokens, chunk: ChunkInfo) -> Tensor:
        """``[F, N]`` float32 saliency on the carrier's grid: :meth:`vit_saliency` of the probed layer,
        carried to the pooled grid by the target's own map where the grids differ."""
        grid_tokens = tokens.tokens_per_frame_in
        score = self.vit_saliency(self._probe(chunk), grid_tokens)
        if score.shape[1] != grid_tokens:
            if chunk.to_prefill_grid is None:
                raise CompatibilityError(
                    f"{self.name}: the tokens lie on a {tokens.grid[0]}x{tokens.grid[1]} grid, not the encoder's, "
                    f"and this target gives no map to carry the saliency there"
                )
            score = chunk.to_prefill_grid(score[..., None])[..., 0]
        if score.shape != (tokens.num_frames, grid_tokens):
            raise RuntimeError(
                f"{self.name}: saliency map has shape {tuple(score.shape)}, the tokens need "
                f"({tokens.num_frames}, {grid_tokens})"
            )
        return score

    # ---------------------------------------------------------------------- reduction
    def frame_noise(self, frame: int) -> Noise | None:
        """The DPC density noise of stream frame ``frame`` (None with ``noise: none``)."""
        if self.params.noise == "none":
            return None
        seed = (self.params.seed * 1_000_003 + frame) % (2**63)

        def draw(n: int) -> Tensor:
            return torch.rand(n, generator=torch.Generator().manual_seed(seed))

        return draw

    def plan(
        self,
        tokens: VisualTokens,
        saliency: Tensor,
        state: StreamingTomCtrState,
        noise: list[Noise | None] | None = None,
    ) -> CtrPlan:
        """The chunk's reduction; pure. ``saliency`` ``[F, N]``; ``noise``: one source per frame
        (default: :meth:`frame_noise` of each stream frame)."""
        if not isinstance(state, StreamingTomCtrState):
            raise TypeError(f"{self.name} is stateful: pass the object from new_state()")
        if not tokens.is_full_grid() or not bool((tokens.sizes == 1).all()):
            raise ValueError(
                f"{self.name} compares every grid position with the previous frame, so it needs every token of "
                f"each frame ({tokens.tokens_per_frame_in}), got {tokens.count} rows in {tokens.num_frames} "
                f"frame(s); put it first in pre_prefill"
            )
        p = self.params
        f, n = tokens.num_frames, tokens.tokens_per_frame_in
        x = tokens.tokens.view(f, n, -1)
        if saliency.shape != (f, n) or not bool(torch.isfinite(saliency).all()):
            raise ValueError(
                f"{self.name}: saliency must be finite with shape ({f}, {n}), got {tuple(saliency.shape)}"
            )
        prev = state.last_frame
        if prev is not None and prev.shape != x.shape[1:]:
            raise ValueError(
                f"{self.name}: this chunk's frames are {tuple(x.shape[1:])}, the stream's previous frame was "
                f"{tuple(prev.shape)}; a stream keeps one frame layout"
            )
        if noise is None:
            noise = [self.frame_noise(tokens.first_frame + i) for i in range(f)]
        keep = min(p.tokens_per_frame, n)
        carried = state.normed
        prev_normed = carried[1] if carried is not None and carried[0] is prev else None
        with torch.no_grad():
            normed = normalized_rows(x)
            mask = static_masks(x, prev, p.similarity_threshold, normed, prev_normed)
            frames = tuple(
                reduce_frame(x[i], saliency[i], mask[i], keep, p.k, p.beta, noise[i], p.dpc_delta)
                for i in range(f)
            )
        return CtrPlan(mask, frames, x[-1], normed[-1])

    def carve(self, tokens: VisualTokens, plan: CtrPlan) -> VisualTokens:
        """The carrier after ``plan``: dynamic picks taken, static members merged into their centres
        (one :meth:`VisualTokens.regroup`; a one-frame chunk's frame arrays are the carrier's own)."""
        if len(plan.frames) == 1:
            fr = plan.frames[0]
            return tokens.regroup(fr.owner, fr.kept, fr.rows.to(tokens.tokens.dtype))
        n = tokens.tokens_per_frame_in
        dev = tokens.tokens.device
        keep = len(plan.frames[0].kept) if plan.frames else 0
        owner = torch.cat([fr.owner + (fr.owner >= 0) * (i * keep) for i, fr in enumerate(plan.frames)])
        offsets = torch.arange(len(plan.frames), device=dev)
        anchor = torch.cat([fr.kept for fr in plan.frames]) + (offsets * n).repeat_interleave(keep)
        rows = torch.cat([fr.rows for fr in plan.frames])
        return tokens.regroup(owner, anchor, rows.to(tokens.tokens.dtype))

    def commit(self, state: StreamingTomCtrState, plan: CtrPlan) -> None:
        state.last_frame = plan.last_frame
        state.normed = None if plan.last_normed is None else (plan.last_frame, plan.last_normed)

    def apply(self, tokens: VisualTokens, state: StreamingTomCtrState, chunk: ChunkInfo) -> VisualTokens:
        if tokens.count == 0:
            return tokens
        with torch.no_grad():
            plan = self.plan(tokens, self.saliency(tokens, chunk), state)
            out = self.carve(tokens, plan)
        self.commit(state, plan)
        return out
