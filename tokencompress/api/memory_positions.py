"""Positions of retrieved memory at question time, for 1-D RoPE and for Qwen's 3-D M-RoPE.

A memory that answers over a subset of the stream (ReKV's retrieved frames, a quantized store
read back at a question) has to give the kept tokens positions again: the stream's own ones have
gaps where frames were left out, and they grow without bound. On 1-D RoPE ReKV simply numbers
``[sinks ; frames in time order ; question]`` from 0. Under M-RoPE a frame's tokens sit at
``(t, h, w)`` on its grid and text sits at the same value on all three axes, so "number from 0"
has no meaning by itself. The scheme used here, on every target:

* the sinks (the system prompt, text at the start of the stream) keep their positions;
* each retrieved frame, in time order, is moved as a whole by one shift on **all three axes**,
  so its own geometry is kept exactly: its ``(h, w)`` grid offsets, its ``t`` rows relative to
  each other, and the positions of the delimiter / timestamp rows that travel with it. The
  first frame starts right after the sinks; each next one starts where the stream itself
  advanced after the previous one (``advance`` = next frame's start - this frame's start, or
  the stream's next position - this frame's start for the newest frame). So frames follow each
  other as consecutive frames of a video do, the gaps of frames not retrieved are closed, and
  the ``t`` axis is renumbered in time order;
* the question's text continues at the later of where the stream would continue after the last
  retrieved frame and one past the memory's largest position, so the answer always comes after
  everything it attends to.

Two properties follow. When every frame is retrieved, each shift is 0 and the question lands on
the stream's own next position: the answer sees exactly what a plain stream sees (the tests
check logits). And positions stay bounded by the sinks plus the retrieved frames' spans, however
long the stream ran. On 1-D RoPE with one row per token this reduces to ReKV's renumbering
(frames of ``block_size`` tokens back to back after the sinks). On Qwen3-VL the frame's
timestamp text keeps its content (the real time of the frame) while its position moves with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .target import LLMState

__all__ = [
    "CallPositionLog",
    "FrameSpan",
    "RetrievedPositions",
    "frame_advances",
    "retrieved_positions",
    "row_frames",
    "text_positions",
]


@dataclass(frozen=True)
class FrameSpan:
    """One stored frame as the stream placed it."""

    positions: Tensor
    """``[R, n]`` (R = 1 for 1-D RoPE, 3 for M-RoPE) positions of every row the frame brings back."""
    start: int
    """Where the frame's span begins in the stream (the smallest of its positions)."""
    advance: int
    """How far the stream's position moved from this frame's start to the next frame's start (for
    the newest frame: to the stream's next position). See :func:`frame_advances`."""


@dataclass(frozen=True)
class RetrievedPositions:
    sinks: Tensor
    """``[R, S]`` the sinks' positions (unchanged)."""
    frames: list[Tensor]
    """``[R, n_i]`` each retrieved frame's new positions, in the order given."""
    question: int
    """First position of the question's text (all axes); later text continues from it."""

    @property
    def largest(self) -> int:
        """The largest position of the memory (-1 when it is empty)."""
        return max([-1] + [int(p.max()) for p in [self.sinks, *self.frames] if p.numel()])


def frame_advances(starts: Sequence[int], next_position: int) -> list[int]:
    """``advance`` of every stored frame from all frames' ``starts`` (in time order) and the
    stream's next position."""
    ends = [*starts[1:], next_position]
    return [e - s for s, e in zip(starts, ends, strict=True)]


def retrieved_positions(sinks: Tensor, frames: Sequence[FrameSpan]) -> RetrievedPositions:
    """New positions of ``[sinks ; frames]`` (frames in time order) and where the question starts.

    ``sinks`` is ``[R, S]`` (S may be 0). Every frame moves by ``cursor - start`` on all axes,
    the cursor starting one past the sinks and growing by each frame's ``advance``.
    """
    cursor = int(sinks.max()) + 1 if sinks.numel() else 0
    moved = []
    for span in frames:
        moved.append(span.positions + (cursor - span.start))
        cursor += span.advance
    out = RetrievedPositions(sinks, moved, cursor)
    return RetrievedPositions(sinks, moved, max(cursor, out.largest + 1))


def text_positions(start: int, n: int, rows: int, device: torch.device | str = "cpu") -> Tensor:
    """``[rows, n]`` positions of ``n`` text tokens from ``start`` (the same value on every axis)."""
    return torch.arange(start, start + n, device=device).expand(rows, n)


def row_frames(visual: Tensor, seen: int, frame_rows: int) -> Tensor:
    """``[L]`` the frame each row of a chunk's prefill belongs to, from its ``[L]`` bool visual-row
    mask, the visual rows stored before it (``seen``) and the visual rows of one frame.

    Visual rows count off whole frames. Every other row (a delimiter, timestamp text) travels with
    the frame whose visual rows come next in the chunk, or with the chunk's last frame when no
    visual row follows, so a ``[timestamp] <|vision_start|> ... <|vision_end|>`` group stays whole.
    """
    n_vis = int(visual.sum())
    frame = torch.empty(visual.shape[0], dtype=torch.long)
    frame[visual] = (seen + torch.arange(n_vis)) // frame_rows
    following = (seen + n_vis - 1) // frame_rows if n_vis else seen // frame_rows
    for i in range(visual.shape[0] - 1, -1, -1):
        if visual[i]:
            following = int(frame[i])
        else:
            frame[i] = following
    return frame


class CallPositionLog:
    """Mixin of a kv_cache memory on an M-RoPE target: each encode call's ``[3, L]`` positions.

    The stream logs the positions of every decoder call (``llm.position_log``, the memory sets
    ``logs_positions``) and tells which rows of a frames call are visual (``visual_rows``, with
    ``wants_visual_rows``); the memory reads both when the call's first layer reaches it
    (:meth:`logged_call`). Put it before the memory's base class so its hooks run first and chain
    on. ``_log`` is the stream's list, so a memory lists it among the fields its snapshot shares.
    """

    owner: str
    """The strategy's name, for the errors below."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log: list[Tensor] | None = None
        self._mask: Tensor | None = None

    def visual_rows(self, llm: LLMState, rows: Tensor) -> None:
        self._mask = rows.cpu()

    def before_prefill(self, llm: LLMState, kind: str, tokens: int) -> None:
        super().before_prefill(llm, kind, tokens)  # type: ignore[misc]
        self._log = llm.position_log
        if kind != "frames":
            self._mask = None

    def after_encode(self, llm: LLMState) -> None:
        super().after_encode(llm)  # type: ignore[misc]
        if llm.position_log is not None:
            llm.position_log.clear()  # each call's positions were read by its first layer

    def end_question(self, llm: LLMState) -> None:
        super().end_question(llm)  # type: ignore[misc]
        if llm.position_log is not None:
            llm.position_log.clear()

    def logged_call(self, length: int) -> tuple[Tensor, Tensor]:
        """(``[3, length]`` positions, ``[length]`` bool visual mask) of the encode call now starting;
        the mask is consumed (all False for a call without visual rows)."""
        if not self._log:
            raise RuntimeError(
                f"{self.owner} (M-RoPE): a decoder call without logged positions; prefill through the stream"
            )
        pos = self._log[-1].cpu()
        if pos.shape != (3, length):
            raise RuntimeError(
                f"{self.owner} (M-RoPE): logged positions {tuple(pos.shape)} for a call of {length} rows"
            )
        mask = self._mask if self._mask is not None else torch.zeros(length, dtype=torch.bool)
        self._mask = None
        return pos, mask
