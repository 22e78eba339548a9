"""What a tokencompress pipeline does to one video inside vLLM, decided from shapes alone.

vLLM lays out a request before its encoder runs: the multimodal processor writes one placeholder
token per video token the model will hand over, so the count must follow from the video's grid.
:class:`ServingPlan` is that contract for one pipeline on one model geometry:

* :meth:`ServingPlan.count` (the processor side, in the API process): tokens a video of grid
  ``[t, h, w]`` (ViT patches; ``t`` temporal slices of 2 frames on Qwen) keeps.
* :meth:`ServingPlan.select` (the model side, in the worker): the kept rows of the merged
  embeddings ``[t * h' * w', D]`` (``h' = h / merge``), and their features, running the
  pipeline's strategies on the request's frames as one stream: chunks of
  ``stream.frames_per_chunk`` frames, in order, each strategy with fresh per-request state.

Everything a serving engine cannot host is refused when the plan is built (engine start), with
the reason and what would work: strategies inside the encoder (``pre_vit_block``), those that read
the encoder's attention, keys or inner layers (VisionZip's probe), ``kv_cache`` stages (vLLM's
paged cache owns the decoder memory), counts that follow the data, an odd ``frames_per_chunk``
(vLLM pairs consecutive frames into one temporal slice, so a chunk must hold whole slices).
This module imports no vLLM: it is tested in the project's own environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokencompress import (
    ChunkInfo,
    CompatibilityError,
    PipelineConfig,
    Registry,
    Stage,
    StageInfo,
    VisualTokens,
)
from tokencompress.api.strategy import TokenStrategy
from tokencompress.plugins.faults import Attribution, check_tokens, guarded

__all__ = ["Geometry", "ServingPlan", "Selection"]

WORKS = "post_vit / pre_prefill strategies whose planned_count is fixed by the shape (evs, stc_pruner, vidcom2_stream, uniform_grid, ...)"
"""What a refusal names as working instead."""


@dataclass(frozen=True)
class Geometry:
    """The model facts a plan needs (read from the Hugging Face config vLLM loaded)."""

    target: str
    """tokencompress target name of the architecture (``qwen2_5_vl``)."""
    merge: int
    """Spatial merge of the PatchMerger: ``merge x merge`` ViT patches make one LLM token."""
    temporal_patch: int
    """Video frames in one temporal slice (a token frame)."""
    llm_dim: int


@dataclass(frozen=True)
class Selection:
    """One video's kept tokens: ``index`` ``[K]`` rows of the unpruned layout (ascending), and their
    features ``[K, D]`` (copies of those rows, or merged features where a strategy merges)."""

    index: Tensor
    tokens: Tensor


class ServingPlan:
    """One pipeline, checked against one model geometry; holds no request state."""

    def __init__(self, config: PipelineConfig, geometry: Geometry, registry: Registry | None = None) -> None:
        self.config = config
        self.geometry = geometry
        self.registry = registry if registry is not None else Registry()
        self.attribution = Attribution(self.registry)
        self.frames_per_chunk = config.stream.frames_per_chunk
        self.steps: list[TokenStrategy] = self._placed()
        self._check_counts()

    # ----------------------------------------------------------- build time
    def _refuse(self, where: str, name: str, why: str) -> CompatibilityError:
        return CompatibilityError(
            f"pipeline '{self.config.name}' {where}: strategy '{name}' {why}; vLLM cannot host that "
            f"(what works there: {WORKS})"
        )

    def _placed(self) -> list[TokenStrategy]:
        """The token strategies in run order (all at pre_prefill), each refused with its reason."""
        g = self.geometry
        for i, s in enumerate(self.config.strategies(Stage.KV_CACHE)):
            raise self._refuse(
                f"stages.kv_cache[{i}]",
                s.name,
                "acts on the decoder's KV cache, which vLLM's paged cache manager owns",
            )
        for i, s in enumerate(self.config.strategies(Stage.IN_DECODER)):
            raise self._refuse(
                f"stages.in_decoder[{i}]",
                s.name,
                "drops tokens between the decoder's layers, which vLLM's model runner and paged cache own",
            )
        for i, s in enumerate(self.config.strategies(Stage.PRE_VIT_BLOCK)):
            raise self._refuse(
                f"stages.pre_vit_block[{i}]", s.name, "runs inside the vision encoder's blocks"
            )
        if self.frames_per_chunk % g.temporal_patch:
            raise CompatibilityError(
                f"pipeline '{self.config.name}' stream.frames_per_chunk = {self.frames_per_chunk}: vLLM pairs "
                f"every {g.temporal_patch} consecutive frames of a video into one temporal slice, so a chunk "
                f"must hold whole slices; use a multiple of {g.temporal_patch}"
            )
        info = self.stage_info()
        steps: list[TokenStrategy] = []
        for declared in (Stage.POST_VIT, Stage.PRE_PREFILL):
            for i, s in enumerate(self.config.strategies(declared)):
                where = f"stages.{declared.value}[{i}]"
                if s.probe_layers(1_000_000) or s.needs:
                    needs = sorted(n.value for n in s.needs) or ["the inputs of encoder layers"]
                    raise self._refuse(where, s.name, f"reads {', '.join(needs)} of the encoder")
                if s.effective_stage({Stage.PRE_PREFILL: info}) != Stage.PRE_PREFILL:
                    raise self._refuse(
                        where,
                        s.name,
                        f"runs on the encoder output before the merger on {g.target} (its post_vit grid, "
                        "where every token is needed), which vLLM's encoder does not hand out",
                    )
                guarded(self.attribution, "strategy", s, f"check, {where}", s.check, info)
                assert isinstance(s, TokenStrategy)
                steps.append(s)
        # strategies moved to pre_prefill run ahead of the stage's own, as in the transformers path
        steps.sort(key=lambda s: s.stage == Stage.PRE_PREFILL)
        return steps

    def stage_info(self, grid: tuple[int, int] = (16, 16)) -> StageInfo:
        """The pre_prefill layout for a merged grid ``(h', w')`` (the build-time checks use 16 x 16,
        the smallest grid a default Qwen frame has; :meth:`count` checks every video's own)."""
        return StageInfo(Stage.PRE_PREFILL, grid[0] * grid[1], self.geometry.llm_dim, grid)

    def _check_counts(self) -> None:
        per_chunk = self.frames_per_chunk // self.geometry.temporal_patch
        for index in (0, 1):  # the first chunk may differ from the rest (EVS), the rest do not
            self._chunk_count(self.stage_info().tokens_per_frame, per_chunk, index)

    # --------------------------------------------------------- shape side
    @property
    def active(self) -> bool:
        """False for a pipeline without token strategies (the baseline): nothing to do."""
        return bool(self.steps)

    def chunks(self, slices: int) -> list[tuple[int, int]]:
        """``[start, stop)`` temporal slices of each chunk of a video with ``slices`` slices; leftover
        slices form a last, shorter chunk (as a stream's flush does)."""
        step = self.frames_per_chunk // self.geometry.temporal_patch
        return [(a, min(a + step, slices)) for a in range(0, slices, step)]

    def _chunk_count(self, per_frame: int, frames: int, index: int) -> int:
        n = per_frame * frames
        for s in self.steps:
            nxt = guarded(
                self.attribution,
                "strategy",
                s,
                "planned_count_at",
                s.planned_count_at,
                n // frames if frames else 0,
                frames,
                index,
            )
            if nxt is None:
                raise self._refuse(
                    f"(chunk {index}: {frames} slice(s) of {per_frame} tokens)",
                    s.name,
                    "keeps a number of tokens that follows the data (planned_count is None), but vLLM "
                    "writes the prompt's placeholders before the encoder runs",
                )
            n = nxt
        return n

    def counts(self, grid_thw: Sequence[int]) -> list[int]:
        """Kept tokens of each chunk of a video whose ViT grid is ``[t, h, w]``."""
        t, h, w = (int(v) for v in grid_thw)
        m = self.geometry.merge
        per_frame = (h // m) * (w // m)
        for s in self.steps:
            guarded(self.attribution, "strategy", s, "check", s.check, self.stage_info((h // m, w // m)))
        return [self._chunk_count(per_frame, b - a, i) for i, (a, b) in enumerate(self.chunks(t))]

    def count(self, grid_thw: Sequence[int]) -> int:
        """Placeholders the processor writes for a video whose ViT grid is ``[t, h, w]``."""
        return sum(self.counts(grid_thw))

    # --------------------------------------------------------- model side
    @torch.inference_mode()
    def select(self, embeddings: Tensor, grid_thw: Sequence[int]) -> Selection:
        """Run the pipeline on one video's merged embeddings ``[t * h' * w', D]`` (rows frame-major,
        row-major on the merged grid, as vLLM's Qwen encoder returns them) as one fresh stream."""
        t, h, w = (int(v) for v in grid_thw)
        m = self.geometry.merge
        grid = (h // m, w // m)
        per = grid[0] * grid[1]
        if embeddings.shape[0] != t * per:
            raise ValueError(f"video of grid {[t, h, w]} has {t * per} tokens, got {embeddings.shape[0]}")
        planned = self.counts(grid_thw)
        states: list[Any] = [s.new_state() for s in self.steps]
        index, tokens = [], []
        for c, (a, b) in enumerate(self.chunks(t)):
            chunk = ChunkInfo(
                index=c,
                first_frame=a * self.geometry.temporal_patch,
                num_frames=(b - a) * self.geometry.temporal_patch,
                first_token_frame=a,
            )
            x = embeddings[a * per : b * per].reshape(b - a, per, -1)
            kept = self._run_chunk(VisualTokens.from_frames(x, grid, first_frame=a), states, chunk)
            if kept.count != planned[c]:
                raise self.attribution.fault(
                    "strategy",
                    self.steps[-1],
                    f"chunk {c}",
                    f"kept {kept.count} tokens, but the prompt holds {planned[c]} placeholders for it",
                )
            index.append(kept.source + a * per)
            tokens.append(kept.tokens)
        return Selection(torch.cat(index), torch.cat(tokens))

    def _run_chunk(self, tokens: VisualTokens, states: list[Any], chunk: ChunkInfo) -> VisualTokens:
        for s, state in zip(self.steps, states, strict=True):
            guarded(
                self.attribution,
                "strategy",
                s,
                f"start_chunk, chunk {chunk.index}",
                s.start_chunk,
                state,
                chunk,
            )
        where = f"pre_prefill, chunk {chunk.index}"
        for s, state in zip(self.steps, states, strict=True):
            out = guarded(self.attribution, "strategy", s, where, s.apply, tokens, state, chunk)
            tokens = check_tokens(self.attribution, s, where, tokens, out)
        return tokens
