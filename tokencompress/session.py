"""A streaming session: frames in chunk by chunk, KV cache kept, questions answered.

A :class:`Stream` owns every piece of mutable state of one video: each strategy's state (the
Cacher's reference tensors and chunk counter, the Pruner's memory), the KV cache and the
position counter. Streams on one bound model never share any of it, so they can be
interleaved freely; ``reset()`` drops it all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .stages import Stage
from .strategy import ChunkInfo
from .tokens import VisualTokens

if TYPE_CHECKING:
    from .pipeline import BoundPipeline

__all__ = ["Stream", "ChunkStats", "Answer"]


@dataclass(frozen=True)
class ChunkStats:
    """What one chunk cost and kept; token counts are per stage (in, out)."""

    chunk: int
    first_frame: int
    frames: int
    vit_tokens: int
    post_vit: tuple[int, int]
    pre_prefill: tuple[int, int]
    preprocess_ms: float
    vit_ms: float
    compress_ms: float
    prefill_ms: float
    total_ms: float
    cache_tokens: int

    @property
    def llm_tokens(self) -> int:
        return self.pre_prefill[1]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: list[int]
    first_token_ms: float
    total_ms: float
    first_logits: Tensor = field(repr=False)


class Stream:
    """One video stream through a :class:`BoundPipeline`.

    ``tokenizer`` is needed for the chat prompt and questions; without one the stream can
    still encode and prefill frames (prompt text can then be given as ids).
    """

    def __init__(self, bound: BoundPipeline, stream_id: int = 0, tokenizer: Any = None) -> None:
        self.bound = bound
        self.target = bound.target
        self.id = stream_id
        self.tokenizer = tokenizer
        self.frames_per_chunk = bound.config.stream.frames_per_chunk
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the video: new strategy states, empty KV cache, counters at zero."""
        self.states = self.bound.new_states()
        self.llm = self.target.new_llm_state()
        self.frames_seen = 0
        self.token_frames_seen = 0
        self.chunks_done = 0
        self._pending: list[np.ndarray] = []
        self._prefixed = False
        self.history: list[ChunkStats] = []

    # -------------------------------------------------------------- prompts
    def _ids(self, text: str) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this stream has no tokenizer: pass tokenizer= to stream(), or give token ids")
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)

    def prefix_text(self) -> str:
        return f"<|im_start|>system\n{self.target.system_prompt}<|im_end|>\n<|im_start|>user\n"

    @staticmethod
    def question_text(question: str) -> str:
        return f"\n{question}<|im_end|>\n<|im_start|>assistant\n"

    def _ensure_prefix(self) -> None:
        if not self._prefixed:
            self._prefixed = True
            if self.tokenizer is not None:
                self.target.prefill_text(self.llm, self._ids(self.prefix_text()), logits=False)

    def prefill_ids(self, ids: Tensor) -> Tensor:
        """Append raw token ids (no chat formatting); returns last-token logits."""
        self._prefixed = True
        return self.target.prefill_text(self.llm, ids)

    # --------------------------------------------------------------- frames
    def add_frames(self, frames: np.ndarray | Tensor) -> list[ChunkStats]:
        """Queue ``[N, H, W, 3]`` uint8 frames; encode and prefill every full chunk."""
        arr = frames.cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        self._pending.extend(arr)
        done = []
        while len(self._pending) >= self.frames_per_chunk:
            batch, self._pending = (
                self._pending[: self.frames_per_chunk],
                self._pending[self.frames_per_chunk :],
            )
            done.append(self._encode_chunk(np.stack(batch)))
        return done

    def flush(self) -> list[ChunkStats]:
        """Encode leftover frames as one more (short) chunk, never with a stale chunk index."""
        if not self._pending:
            return []
        batch, self._pending = np.stack(self._pending), []
        return [self._encode_chunk(batch)]

    def add_video(
        self, path: str | Path, fps: float | None = None, max_frames: int | None = None
    ) -> Iterator[ChunkStats]:
        """Decode ``path`` at ``fps`` (default: the pipeline's) and stream it; yields per-chunk stats."""
        from .video import iter_frames

        fps = self.bound.config.stream.fps if fps is None else fps
        for frame in iter_frames(path, fps=fps, max_frames=max_frames):
            yield from self.add_frames(frame.rgb[None])
        yield from self.flush()

    def encode_only(self, frames: np.ndarray | Tensor) -> VisualTokens:
        """Run the vision path of one chunk (strategies included) without touching the LLM."""
        arr = frames.cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
        return self._vision(arr, {})[0]

    def _vision(self, frames: np.ndarray, record: dict[str, Any]) -> tuple[VisualTokens, ChunkInfo]:
        chunk = ChunkInfo(
            index=self.chunks_done,
            first_frame=self.frames_seen,
            num_frames=len(frames),
            to_prefill_grid=self.target.prefill_grid_map(),
            first_token_frame=self.token_frames_seen,
        )
        for strategy, state in zip(self.bound.steps, self.states, strict=True):
            strategy.start_chunk(state, chunk)
        t0 = time.perf_counter()
        pixels = self.target.preprocess(frames)
        record["vit_start"] = time.perf_counter()
        record["preprocess"] = record["vit_start"] - t0

        def runner(stage: Stage, tokens: VisualTokens) -> VisualTokens:
            if stage == Stage.POST_VIT:  # the tower just finished
                seconds = time.perf_counter() - record["vit_start"]
                self.bound.observe(Stage.PRE_VIT_BLOCK, chunk, tokens.count, tokens.count, seconds, self.id)
            return self.bound.run_stage(stage, tokens, self.states, chunk, record, self.id)

        with self.bound.patch.chunk(self.bound.block_states(self.states), chunk):
            tokens = self.target.encode(pixels, chunk, runner)
        self.chunks_done += 1
        self.frames_seen += len(frames)
        self.token_frames_seen += self.target.token_frames(len(frames))
        return tokens, chunk

    def _encode_chunk(self, frames: np.ndarray) -> ChunkStats:
        self._ensure_prefix()
        record: dict[str, Any] = {}
        t0 = time.perf_counter()
        tokens, chunk = self._vision(frames, record)
        t1 = time.perf_counter()
        self.target.prefill_visual(self.llm, tokens)
        t2 = time.perf_counter()
        per_frame = self.target.stage_info()[Stage.PRE_VIT_BLOCK].tokens_per_frame
        counts = record.get("tokens", {})
        secs = record.get("seconds", {})
        vit_end = record.get("stage_start", {}).get(Stage.POST_VIT, t1)
        stats = ChunkStats(
            chunk=chunk.index,
            first_frame=chunk.first_frame,
            frames=chunk.num_frames,
            vit_tokens=per_frame * self.target.token_frames(chunk.num_frames),
            post_vit=counts.get(Stage.POST_VIT, (0, 0)),
            pre_prefill=counts.get(Stage.PRE_PREFILL, (0, 0)),
            preprocess_ms=1e3 * record["preprocess"],
            vit_ms=1e3 * (vit_end - record["vit_start"]),
            compress_ms=1e3 * sum(secs.values()),
            prefill_ms=1e3 * (t2 - t1),
            total_ms=1e3 * (t2 - t0),
            cache_tokens=self.llm.length,
        )
        self.history.append(stats)
        return stats

    # ------------------------------------------------------------ questions
    def ask(self, question: str | Tensor, max_new_tokens: int = 32) -> Answer:
        """Answer from the cache (greedy), then rewind so the stream can go on with more frames."""
        self.flush()
        self._ensure_prefix()
        length, position = self.llm.length, self.llm.next_position
        t0 = time.perf_counter()
        self.target.end_of_video(self.llm)
        ids = self._ids(self.question_text(question)) if isinstance(question, str) else question
        logits = self.target.prefill_text(self.llm, ids)
        t1 = time.perf_counter()
        stop = set()
        if self.tokenizer is not None:
            for tok in ("<|im_end|>", "<|endoftext|>"):
                tid = self.tokenizer.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid >= 0:
                    stop.add(tid)
        out = self.target.greedy_decode(self.llm, logits, max_new_tokens, stop)
        t2 = time.perf_counter()
        self.target.rewind(self.llm, length, position)
        text = self.tokenizer.decode(out, skip_special_tokens=True) if self.tokenizer is not None else ""
        return Answer(text, out, 1e3 * (t1 - t0), 1e3 * (t2 - t0), logits)
