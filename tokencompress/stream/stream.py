"""A streaming session: frames in chunk by chunk, KV cache kept, questions answered.

A :class:`Stream` owns every piece of mutable state of one video: each strategy's state (the
Cacher's reference tensors and chunk counter, the Pruner's memory), the KV cache and the
position counter. Streams on one bound model never share any of it, so they can be
interleaved freely; ``reset()`` drops it all. A stream takes one caller at a time (``stream_lock``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..api.prefill_segment import PrefillSegment
from ..api.tokens import VisualTokens
from ..api.types import Stage
from ..media.frames import as_frames
from ..plugins.faults import guarded
from .checks import check_ask, check_ids
from .decoder_state import DecoderState
from .lock import StreamLock, one_caller
from .results import Answer, ChunkStats
from .seam import ChunkEncoder, EncodedChunk, StreamPosition
from .timing import now
from .transaction import StreamSnapshot, transaction

__all__ = ["Answer", "ChunkStats", "Stream", "StreamSnapshot"]

T = TypeVar("T")


def _decoder_work(method: Callable[..., T]) -> Callable[..., T]:
    """Run a public stream method inside the bound pipeline's decoder scope (the grouped-K/V
    attention is routed for this thread only; see :meth:`ChunkEncoder.decoder_calls`) and its
    in_decoder scope (the hooks use this stream's bookkeeping)."""

    @functools.wraps(method)
    def run(self: Stream, *args: Any, **kwargs: Any) -> T:
        with self.bound.decoder_calls(), self.decoder.scope():
            return method(self, *args, **kwargs)

    return run


@one_caller("reset", "prefill_ids", "add_frames", "flush", "prefill_waiting", "add_video", "encode_only")
@one_caller("ask", "cache_tokens", "bytes_by_device")
class Stream:
    """One video stream through a :class:`BoundPipeline`.

    ``tokenizer`` is needed for the chat prompt and questions; without one the stream can
    still encode and prefill frames (prompt text can then be given as ids).
    """

    def __init__(self, bound: ChunkEncoder, stream_id: int = 0, tokenizer: Any = None) -> None:
        self.bound = bound
        self.target = bound.target
        self.chat = bound.target.chat_format()
        self.id = stream_id
        self.tokenizer = tokenizer
        self.frames_per_chunk = bound.stream_config.frames_per_chunk
        self.prefill_chunks = bound.stream_config.prefill_chunks
        self._attribution = bound.attribution
        self._lock = StreamLock()
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the video: new strategy states, empty KV cache, counters at zero."""
        self.states = self.bound.new_states()
        self.decoder = DecoderState(self.bound, self.target)
        self.llm, self.kv, self.guard = self.decoder.llm, self.decoder.kv, self.decoder.guard
        self.llm.tokenizer = self.tokenizer
        self.frames_seen = 0
        self.token_frames_seen = 0
        self.chunks_done = 0
        self._pending: list[np.ndarray] = []
        self._waiting: list[PrefillSegment] = []
        """Decoder inputs of chunks waiting for their group prefill (positions assigned)."""
        self._prefixed = False
        self.history: list[ChunkStats] = []

    # -------------------------------------------------------------- prompts
    def _ids(self, text: str) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this stream has no tokenizer: pass tokenizer= to stream(), or give token ids")
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)

    def prefix_text(self) -> str:
        """Text prefilled once before the first chunk (the target's chat format)."""
        return self.chat.prefix

    def question_text(self, question: str) -> str:
        """A question as the target's chat format frames it after the video."""
        return self.chat.question_text(question)

    def _ensure_prefix(self) -> None:
        if not self._prefixed:
            self._prefixed = True
            if self.tokenizer is not None:
                ids = self._ids(self.prefix_text())
                self.guard.check(self.llm.next_position + ids.numel(), "the system prompt")
                self.decoder.before_prefill("text", ids.numel())
                self.target.prefill_text(self.llm, ids, logits=False)
                self.decoder.after_encode()

    @_decoder_work
    def prefill_ids(self, ids: Tensor) -> Tensor:
        """Append raw token ids (no chat formatting) after every chunk so far; returns last-token logits."""
        ids = check_ids(ids, self.target, "prefill_ids")
        self.prefill_waiting()
        return self._transaction(lambda: self._prefill_ids_once(ids))

    def _prefill_ids_once(self, ids: Tensor) -> Tensor:
        self._prefixed = True
        self.guard.check(self.llm.next_position + ids.numel(), "prefill_ids")
        self.decoder.before_prefill("text", ids.numel())
        logits = self.target.prefill_text(self.llm, ids)
        self.decoder.after_encode()
        return logits

    # --------------------------------------------------------------- frames
    @_decoder_work
    def add_frames(self, frames: np.ndarray | Tensor) -> list[ChunkStats]:
        """Queue ``[N, H, W, 3]`` (or one ``[H, W, 3]``, or a list of frames) uint8 RGB frames;
        encode every full chunk.

        Frames are checked before they are queued, so bad input is refused without touching the
        stream's state. A frame's size may change from one frame to the next. Each chunk is a
        transaction (:mod:`tokencompress.stream.transaction`): when one fails, the chunks before it in
        this call stay done, and the stream is left exactly as it was before the failed one,
        with this call's frames from that chunk on dropped from the queue; the error is raised.
        """
        arr = as_frames(frames)
        queued = len(self._pending)
        self._pending.extend(arr)
        done: list[ChunkStats] = []
        while len(self._pending) >= self.frames_per_chunk:
            try:
                done.append(self._encode_chunk(self._pending[: self.frames_per_chunk]))
            except BaseException:
                used = len(done) * self.frames_per_chunk
                del self._pending[max(queued - used, 0) :]  # frames queued before this call stay
                raise
            del self._pending[: self.frames_per_chunk]  # only once the chunk went through
        return done

    @_decoder_work
    def flush(self) -> list[ChunkStats]:
        """Encode leftover frames as one more (short) chunk, never with a stale chunk index, and
        prefill the tokens of every chunk still waiting for its group (``stream.prefill_chunks``).
        Returns the stats of the chunk it encoded, if any. A failed flush leaves the frames queued,
        the waiting chunks waiting and the stream as it was."""
        if not self._pending:
            self.prefill_waiting()
            return []
        stats = self._encode_chunk(list(self._pending), close_group=True)
        self._pending.clear()
        return [stats]

    @property
    def waiting_chunks(self) -> int:
        """Chunks whose tokens wait for their group prefill (at most ``stream.prefill_chunks - 1``)."""
        return len(self._waiting)

    @_decoder_work
    def prefill_waiting(self) -> None:
        """Prefill the tokens of the chunks waiting for their group now (a short group). Its time goes
        to the last chunk's entry in ``history``; a failure leaves them waiting and the stream as it was."""
        if self._waiting:
            self._transaction(self._close_group)

    def _close_group(self) -> None:
        device = self.target.device
        t1 = now(device)
        last = self.history[-1]
        carried = self._prefill_group(last.chunk)
        t2 = now(device)
        ms = 1e3 * (t2 - t1)
        self.history[-1] = dataclasses.replace(
            last,
            prefill_ms=ms,
            total_ms=last.total_ms + ms,
            prefilled_chunks=carried,
            cache_tokens=self.decoder.cache_tokens(),
        )

    def add_video(
        self, path: str | Path, fps: float | None = None, max_frames: int | None = None
    ) -> Iterator[ChunkStats]:
        """Decode ``path`` at ``fps`` (default: the pipeline's) and stream it; yields per-chunk stats."""
        from ..media.video import iter_frames

        fps = self.bound.stream_config.fps if fps is None else fps
        for frame in iter_frames(path, fps=fps, max_frames=max_frames):
            yield from self.add_frames(frame.rgb[None])
        yield from self.flush()

    def encode_only(self, frames: np.ndarray | Tensor) -> VisualTokens:
        """Run the vision path of one chunk (strategies included) without touching the LLM."""
        return self._transaction(lambda: self._vision(as_frames(frames))).tokens

    def _transaction(self, work: Callable[[], T]) -> T:
        """``work()``, or on any exception (Ctrl-C included) the stream as it was before it."""
        return transaction(self, work)

    def snapshot(self) -> StreamSnapshot:
        """Everything a chunk can change: strategy states, counters, history, waiting chunks and the
        decoder state's own snapshot (:mod:`tokencompress.stream.transaction`)."""
        return StreamSnapshot(
            states=self.bound.copy_states(self.states),
            counters=(self.chunks_done, self.frames_seen, self.token_frames_seen, self._prefixed),
            history=len(self.history),
            waiting=list(self._waiting),
            decoder=self.decoder.snapshot(),
        )

    def restore(self, snapshot: StreamSnapshot) -> None:
        self.states = snapshot.states
        self.chunks_done, self.frames_seen, self.token_frames_seen, self._prefixed = snapshot.counters
        del self.history[snapshot.history :]
        self._waiting = list(snapshot.waiting)
        self.decoder.restore(snapshot.decoder)

    def _position(self) -> StreamPosition:
        return StreamPosition(self.chunks_done, self.frames_seen, self.token_frames_seen)

    def _vision(self, frames: list[np.ndarray]) -> EncodedChunk:
        encoded = self.bound.encode_chunk(self.states, frames, self._position(), self.id)
        self.chunks_done += 1
        self.frames_seen += len(frames)
        self.token_frames_seen += self.target.token_frames(len(frames))
        return encoded

    def _encode_chunk(self, frames: list[np.ndarray], close_group: bool = False) -> ChunkStats:
        return self._transaction(lambda: self._encode_chunk_once(frames, close_group))

    def _encode_chunk_once(self, frames: list[np.ndarray], close_group: bool = False) -> ChunkStats:
        self._ensure_prefix()
        device = self.target.device
        t0 = now(device)
        encoded = self._vision(frames)
        chunk, timing = encoded.chunk, encoded.timing
        self.decoder.check_chunk(encoded.tokens, chunk)
        tk = now(device)
        self.decoder.before_prefill("frames", encoded.tokens.count, encoded.tokens)
        undo = (self.llm.length, self.llm.next_position, self.llm.visual_tokens)
        t1 = now(device)
        carried = self._prefill_chunk(encoded, undo, close_group)
        t2 = now(device)
        self.decoder.after_encode()
        t3 = now(device)
        self.decoder.observe(chunk, encoded.tokens.count, t2 - t1, self.id)
        stored_tokens, stored_bytes = self.decoder.stored()
        per_frame = self.target.stage_info()[Stage.PRE_VIT_BLOCK].tokens_per_frame
        stats = ChunkStats(
            chunk=chunk.index,
            first_frame=chunk.first_frame,
            frames=chunk.num_frames,
            vit_tokens=per_frame * self.target.token_frames(chunk.num_frames),
            post_vit=timing.tokens(Stage.POST_VIT),
            pre_prefill=timing.tokens(Stage.PRE_PREFILL),
            preprocess_ms=1e3 * timing.preprocess_s,
            vit_ms=1e3 * timing.vit_s,
            compress_ms=1e3 * timing.compress_s,
            prefill_ms=1e3 * (t2 - t1) if carried else 0.0,
            total_ms=1e3 * (t3 - t0),
            kv_ms=1e3 * ((t1 - tk) + (t3 - t2)),
            cache_tokens=self.decoder.cache_tokens(),
            stored_tokens=stored_tokens,
            stored_bytes=stored_bytes,
            prefilled_chunks=carried,
        )
        self.history.append(stats)
        return stats

    def _prefill_chunk(self, encoded: EncodedChunk, undo: tuple[int, int, int], close_group: bool) -> int:
        """Prefill the chunk, or (``stream.prefill_chunks > 1``) queue its decoder input and prefill the
        group once it is full; returns how many chunks this prefill carried (0: the tokens wait)."""
        chunk = encoded.chunk
        where = f"prefill, chunk {chunk.index}"
        if self.prefill_chunks == 1:
            guarded(
                self._attribution,
                "target",
                self.target,
                where,
                self.target.prefill_visual,
                self.llm,
                encoded.tokens,
            )
            self.decoder.guard_chunk(chunk, *undo)
            return 1
        segment = guarded(
            self._attribution,
            "target",
            self.target,
            where,
            self.target.visual_segment,
            self.llm,
            encoded.tokens,
        )
        self.decoder.guard_chunk(chunk, *undo)  # positions are assigned now: waiting tokens count
        self._waiting.append(segment)
        if close_group or len(self._waiting) >= self.prefill_chunks:
            return self._prefill_group(chunk.index)
        return 0

    def _prefill_group(self, last_chunk: int) -> int:
        n = len(self._waiting)
        where = f"prefill, chunk {last_chunk}" + (f" (grouped with the {n - 1} before it)" if n > 1 else "")
        guarded(
            self._attribution,
            "target",
            self.target,
            where,
            self.target.prefill_segments,
            self.llm,
            self._waiting,
        )
        self._waiting = []
        return n

    # ------------------------------------------------------------ questions
    @_decoder_work
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
        question, frames = check_ask(self.target, question, max_new_tokens, frames, self.kv)
        ids = self._ids(self.question_text(question)) if isinstance(question, str) else question
        bare = self._ids(question) if isinstance(question, str) else question
        self.flush()
        self._ensure_prefix()
        self.guard.check(self.llm.next_position + 2 * ids.numel() + max_new_tokens + 1, "this question")
        length, position = self.llm.length, self.llm.next_position
        device = self.target.device
        retrieval_ms, retrieved = 0.0, None
        try:
            t0 = now(device)
            if self.kv is not None:
                self.kv.retrieve(self.target, self.llm, bare, frames)
                retrieval_ms = 1e3 * (now(device) - t0)
                retrieved = self.kv.retrieved()
            self.target.end_of_video(self.llm)
            logits = self.target.prefill_text(self.llm, ids)
            t1 = now(device)
            stop = set()
            if self.tokenizer is not None:
                for tok in self.chat.stop_tokens:
                    tid = self.tokenizer.convert_tokens_to_ids(tok)
                    if isinstance(tid, int) and tid >= 0:
                        stop.add(tid)
            with self.decoder.answering():
                out = self.target.greedy_decode(self.llm, logits, max_new_tokens, stop)
            t2 = now(device)
        finally:  # the question and answer never stay in the cache, even when decoding fails
            if self.kv is not None:
                self.kv.end_question(self.llm)
            self.target.rewind(self.llm, length, position)
        text = self.tokenizer.decode(out, skip_special_tokens=True) if self.tokenizer is not None else ""
        return Answer(text, out, 1e3 * (t1 - t0), 1e3 * (t2 - t0), logits, retrieval_ms, retrieved)

    # -------------------------------------------------------------- footprint
    def cache_tokens(self) -> int:
        """Tokens resident in the decoder's attention cache (per layer)."""
        return self.decoder.cache_tokens()

    def bytes_by_device(self) -> dict[str, int]:
        """Bytes this stream's decoder state holds (cache and kv_cache memory), by device (``"cpu"``,
        ``"cuda:0"``, ...)."""
        return self.decoder.bytes_by_device()
