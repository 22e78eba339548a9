"""A streaming session: frames in chunk by chunk, KV cache kept, questions answered.

A :class:`Stream` owns every piece of mutable state of one video: each strategy's state (the
Cacher's reference tensors and chunk counter, the Pruner's memory), the KV cache and the
position counter. Streams on one bound model never share any of it, so they can be
interleaved freely; ``reset()`` drops it all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, VideoError
from .positions import PositionGuard
from .stages import Stage
from .strategy import ChunkInfo
from .timing import now
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
    """Tokens resident in the decoder's attention cache after the chunk (per layer)."""
    stored_tokens: int = 0
    """Tokens per layer a kv_cache strategy keeps outside the attention cache (ReKV's block store)."""
    stored_bytes: int = 0
    """Host bytes of that store, all layers."""

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
    retrieval_ms: float = 0.0
    """Time of the kv_cache strategy's retrieval pass (ReKV), included in ``first_token_ms``."""
    retrieved: list[list[int]] | None = None
    """Frames each decoder layer retrieved for this question (ReKV), else None."""


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
        self._reset_memory()
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
                ids = self._ids(self.prefix_text())
                self.guard.check(self.llm.next_position + ids.numel(), "the system prompt")
                self._before_prefill("text", ids.numel())
                self.target.prefill_text(self.llm, ids, logits=False)
                self._after_encode()

    def prefill_ids(self, ids: Tensor) -> Tensor:
        """Append raw token ids (no chat formatting); returns last-token logits."""
        self._prefixed = True
        self.guard.check(self.llm.next_position + ids.numel(), "prefill_ids")
        self._before_prefill("text", ids.numel())
        logits = self.target.prefill_text(self.llm, ids)
        self._after_encode()
        return logits

    # --------------------------------------------------------------- frames
    def add_frames(self, frames: np.ndarray | Tensor) -> list[ChunkStats]:
        """Queue ``[N, H, W, 3]`` (or one ``[H, W, 3]``) uint8 RGB frames; encode every full chunk.

        Frames are checked before they are queued, so bad input is refused without touching the
        stream's state. A frame's size may change from one frame to the next.
        """
        arr = _as_frames(frames)
        self._pending.extend(arr)
        done = []
        while len(self._pending) >= self.frames_per_chunk:
            done.append(self._encode_chunk(self._pending[: self.frames_per_chunk]))
            del self._pending[: self.frames_per_chunk]  # only once the chunk went through
        return done

    def flush(self) -> list[ChunkStats]:
        """Encode leftover frames as one more (short) chunk, never with a stale chunk index."""
        if not self._pending:
            return []
        stats = self._encode_chunk(list(self._pending))
        self._pending.clear()
        return [stats]

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
        return self._vision(list(_as_frames(frames)), {})[0]

    def _vision(self, frames: list[np.ndarray], record: dict[str, Any]) -> tuple[VisualTokens, ChunkInfo]:
        device = self.target.device
        t0 = now(device)
        pixels = self.target.preprocess(frames)  # before any strategy state moves
        record["vit_start"] = now(device)
        record["preprocess"] = record["vit_start"] - t0
        chunk = ChunkInfo(
            index=self.chunks_done,
            first_frame=self.frames_seen,
            num_frames=len(frames),
            to_prefill_grid=self.target.prefill_grid_map(),
            first_token_frame=self.token_frames_seen,
        )
        for strategy, state in zip(self.bound.steps, self.states, strict=True):
            strategy.start_chunk(state, chunk)

        def runner(stage: Stage, tokens: VisualTokens) -> VisualTokens:
            if stage == Stage.POST_VIT:  # the tower just finished
                record.setdefault("stage_start", {})[Stage.POST_VIT] = vit_end = now(device)
                seconds = vit_end - record["vit_start"]
                self.bound.observe(Stage.PRE_VIT_BLOCK, chunk, tokens.count, tokens.count, seconds, self.id)
            return self.bound.run_stage(stage, tokens, self.states, chunk, record, self.id)

        with self.bound.patch.chunk(self.bound.block_states(self.states), chunk):
            tokens = self.target.encode(pixels, chunk, runner)
        self.chunks_done += 1
        self.frames_seen += len(frames)
        self.token_frames_seen += self.target.token_frames(len(frames))
        return tokens, chunk

    def _encode_chunk(self, frames: list[np.ndarray]) -> ChunkStats:
        self._ensure_prefix()
        record: dict[str, Any] = {}
        device = self.target.device
        t0 = now(device)
        tokens, chunk = self._vision(frames, record)
        self._check_chunk(tokens, chunk)
        self._before_prefill("frames", tokens.count)
        undo = (self.llm.length, self.llm.next_position, self.llm.visual_tokens)
        t1 = now(device)
        self.target.prefill_visual(self.llm, tokens)
        self._guard_chunk(chunk, *undo)
        self._after_encode()
        t2 = now(device)
        self._observe_memory(chunk, tokens.count, t2 - t1)
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
            cache_tokens=self.cache_tokens(),
            stored_tokens=self.kv.stored_tokens() if self.kv is not None else 0,
            stored_bytes=self.kv.stored_bytes() if self.kv is not None else 0,
        )
        self.history.append(stats)
        return stats

    # ------------------------------------------------------------ questions
    def ask(
        self, question: str | Tensor, max_new_tokens: int = 32, frames: Sequence[int] | None = None
    ) -> Answer:
        """Answer from the cache (greedy), then rewind so the stream can go on with more frames.

        Frames still waiting for a full chunk are encoded first (as a short chunk), so the answer
        sees every frame so far; later chunk boundaries therefore depend on when questions come.
        With a retrieving kv_cache strategy (ReKV) the bare question (``question`` itself; the
        same ids when given as ids) first chooses what the answer sees; ``frames`` hands it the
        stream frame indices to use instead (external retrieval).
        """
        ids = self._ids(self.question_text(question)) if isinstance(question, str) else question
        bare = self._ids(question) if isinstance(question, str) else question
        if frames is not None and self.kv is None:
            raise ConfigError("ask(frames=...): external retrieval needs a kv_cache strategy such as rekv")
        self.flush()
        self._ensure_prefix()
        self.guard.check(self.llm.next_position + 2 * ids.numel() + max_new_tokens + 1, "this question")
        length, position = self.llm.length, self.llm.next_position
        device = self.target.device
        retrieval_ms, retrieved = 0.0, None
        try:
            t0 = now(device)
            if self.kv is not None:
                self.kv.retrieve(self.target, self.llm, bare, None if frames is None else list(frames))
                retrieval_ms = 1e3 * (now(device) - t0)
                retrieved = self.kv.retrieved()
            self.target.end_of_video(self.llm)
            logits = self.target.prefill_text(self.llm, ids)
            t1 = now(device)
            stop = set()
            if self.tokenizer is not None:
                for tok in ("<|im_end|>", "<|endoftext|>"):
                    tid = self.tokenizer.convert_tokens_to_ids(tok)
                    if isinstance(tid, int) and tid >= 0:
                        stop.add(tid)
            out = self.target.greedy_decode(self.llm, logits, max_new_tokens, stop)
            t2 = now(device)
        finally:  # the question and answer never stay in the cache, even when decoding fails
            if self.kv is not None:
                self.kv.end_question(self.llm)
            self.target.rewind(self.llm, length, position)
        text = self.tokenizer.decode(out, skip_special_tokens=True) if self.tokenizer is not None else ""
        return Answer(text, out, 1e3 * (t1 - t0), 1e3 * (t2 - t0), logits, retrieval_ms, retrieved)

    # -------------------------------------------------------------- kv_cache
    def _reset_memory(self) -> None:
        """A fresh decoder memory: the kv_cache strategy's (if any) or the stock cache."""
        bound, target = self.bound, self.target
        kv = getattr(bound, "kv", None)
        self.kv = kv.new_memory(target, bound.kv_build) if kv is not None else None
        self.llm = self.kv.new_llm_state(target) if self.kv is not None else target.new_llm_state()
        layout = target.decoder_layout()
        self.guard = PositionGuard(
            layout.max_positions if layout is not None else 0,
            target.kv_cache_strategies,
            bounded=self.kv is not None and self.kv.bounds_positions,
        )

    def _before_prefill(self, kind: str, tokens: int) -> None:
        if self.kv is not None:
            if self.kv.custom_attention and not self.bound.kv_patch.installed:
                raise RuntimeError(
                    "the pipeline's decoder hooks are not installed: open streams inside "
                    "`with pipeline.apply(model) as bound:` (bind() alone only checks the pipeline)"
                )
            self.kv.before_prefill(self.llm, kind, tokens)

    def _after_encode(self) -> None:
        if self.kv is not None:
            self.kv.after_encode(self.llm)

    def _check_chunk(self, tokens: VisualTokens, chunk: ChunkInfo) -> None:
        """Refuse a chunk that would break the memory's frame grid."""
        build = getattr(self.bound, "kv_build", None)
        if self.kv is not None and build is not None and getattr(self.kv, "custom_attention", False):
            per = build.tokens_per_frame
            counts = tokens.counts()
            if per is not None and counts.numel() and not bool((counts == per).all()):
                raise ConfigError(
                    f"chunk {chunk.index}: frames kept {counts.tolist()} tokens, but the kv_cache strategy stores "
                    f"one block of {per} tokens per frame; use a pruner with a fixed per-frame budget"
                )

    def _guard_chunk(self, chunk: ChunkInfo, length: int, position: int, visual: int) -> None:
        """After a chunk's prefill: past the position limit, take the chunk back out and refuse it.

        Checked after the fact because only the target knows where its positions end (M-RoPE
        advances by the grid, not the token count); the wasted prefill happens once, at the limit.
        """
        try:
            self.guard.check(self.llm.next_position, f"chunk {chunk.index}")
        except Exception:
            self.target.rewind(self.llm, length, position)
            self.llm.visual_tokens = visual
            raise

    def _observe_memory(self, chunk: ChunkInfo, n_in: int, seconds: float) -> None:
        """Tell observers what the decoder memory holds after a chunk (stage kv_cache)."""
        if self.kv is not None:
            self.bound.observe(Stage.KV_CACHE, chunk, n_in, self.cache_tokens(), seconds, self.id)

    def cache_tokens(self) -> int:
        """Tokens resident in the decoder's attention cache (per layer)."""
        return self.kv.resident_tokens(self.llm) if self.kv is not None else self.llm.length

    def memory(self) -> dict[str, int]:
        """Bytes this stream's decoder memory holds, by device (``"cpu"``, ``"cuda:0"``, ...)."""
        device = str(self.target.device)
        if self.kv is None:
            held = sum(
                t.numel() * t.element_size()
                for layer in self.llm.cache.layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if isinstance(t, Tensor)
            )
            return {device: held}
        out = {device: self.kv.device_bytes(self.llm)}
        stored = self.kv.stored_bytes(allocated=True)
        if stored:
            out["cpu"] = out.get("cpu", 0) + stored
        return out


def _as_frames(frames: np.ndarray | Tensor) -> list[np.ndarray]:
    """Frames as a list of ``[H, W, 3]`` uint8 arrays, or a one-line error naming what is wrong."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise VideoError(f"frames must be RGB [N, H, W, 3] (or one [H, W, 3]), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise VideoError(f"frames must be uint8 RGB (0-255), got {arr.dtype}; convert with .astype(np.uint8)")
    return list(arr)
