"""Where StreamingTOM's memory puts its tokens on the rotary axis, in one place.

Every position this memory uses is decided here, and every rotation goes through :func:`rope`, so
another position scheme (an M-RoPE one, say) replaces this module's functions and nothing else.
All positions are 1-D ``[L]`` int64 tensors; keys are stored *after* rotation, as a decoder cache
holds them, so a stored key keeps the rotation of the call that produced it.

* **Encoding** (:func:`chunk_positions`): the reference numbers a chunk from the length of the past
  it attends to, ``n_init + len(window)``, not from the tokens seen (``positions="window"``): once
  the window is full every chunk restarts at ``n_init + W``, so positions stay bounded but chunks
  share them and the window's keys carry older rotations. ``positions="absolute"`` numbers chunks
  by the stream instead (``n_init + stored tokens``).
* **Retrieval pass** (:func:`question_positions`): ``"reference"`` rotates the queries at
  ``0..Lq-1``, rotates *all* keys ``[memory ; question]`` again at ``0..P+Lq-1`` (the memory's keys
  are then rotated twice and the question's keys sit at ``P..``) and aligns the causal mask to the
  upper left (question token ``i`` sees keys ``0..i``: with a short question only system-prompt
  tokens). ``"consistent"`` puts the question's queries and keys at ``P..P+Lq-1`` over the memory
  as stored, with the ordinary causal mask.
* **Answer** (:func:`answer_positions`): the prompt and the decoded tokens continue from the length
  of the answer cache: the prompt starts at ``P = n_init + retrieved tokens`` while the retrieved
  keys keep their encode rotations.

**Qwen's 3-D M-RoPE** (the ``*_3d`` functions; positions ``[3, L]``, rotations by the target's own
rotary, :meth:`~tokencompress.api.target.Target.rope_cos_sin`). "One axis" arithmetic has no meaning
there, so every placement is the project's one scheme for retrieved memory,
:func:`~tokencompress.api.memory_positions.retrieved_positions` (the sinks keep their positions,
frames move as wholes by one shift on all three axes, back to back in time order, text after them):

* **Encoding** (:func:`encode_shift`): a chunk is prefilled at its own stream positions moved by
  one shift ``sigma``. ``"window"`` (the reference's rule, generalised): the encoding window's
  frames are placed by the scheme and the chunk continues after them, so the positions of frames
  that left the window are closed up exactly as ``n_init + len(window)`` closes them on one axis;
  window keys keep the rotation they were stored with (stale once frames left, as on one axis).
  ``"absolute"``: ``sigma = 0``, the stream's own positions. Both are 0 while nothing has left.
* **Question** (:func:`question_positions_3d`): the retrieved groups' frames are placed by the
  scheme; keys stored at ``stream + sigma`` are moved to their place by one rotation of
  ``shift - sigma`` on all axes (:func:`shift_keys`: rotary angles add). ``"consistent"`` puts
  the question at the scheme's question position over that placed memory. ``"reference"`` keeps
  the reference's retrieval-pass quirks in the scheme's terms: the stored keys are rotated once
  more at the placed positions (the compact renumbering of one axis *is* the scheme there), the
  question's keys sit at the question position, its queries at ``0..Lq-1``, upper-left mask.
* **Answer** (:func:`text_positions`): the prompt and decoded tokens continue on all axes from the
  question position over the placed memory (the one-axis ``P``-while-keys-keep-encode-rotation
  quirk has no M-RoPE counterpart: the scheme is used). With every group retrieved and nothing
  left the window, every shift is 0 and the positions are the plain stream's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ...api.memory_positions import FrameSpan, frame_advances, retrieved_positions, text_positions
from ...kernels.rope import cos_sin, rotate

__all__ = [
    "QuestionPositions",
    "RopeFn",
    "answer_positions",
    "chunk_positions",
    "encode_shift",
    "question_positions",
    "question_positions_3d",
    "rope",
    "rope_3d",
    "shift_keys",
    "text_positions",
]

RopeFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``positions [R, L] -> (cos, sin) [L, d]`` float32: the target's own rotary."""

Align = Literal["bottom_right", "upper_left"]


def rope(x: Tensor, positions: Tensor, freqs: Tensor) -> Tensor:
    """``x`` ``[heads, L, d]`` rotated at ``positions`` ``[L]`` (float32 result)."""
    cos, sin = cos_sin(positions, freqs)
    return rotate(x, cos, sin)


def chunk_positions(n_init: int, window: int, stored: int, length: int, rule: str, device) -> Tensor:  # type: ignore[no-untyped-def]
    """Positions of a chunk of ``length`` tokens after ``n_init`` prompt tokens, a window of ``window``
    stored tokens and ``stored`` stored tokens in all (``rule``: ``"window"`` or ``"absolute"``)."""
    start = n_init + (window if rule == "window" else stored)
    return torch.arange(start, start + length, device=device)


@dataclass(frozen=True)
class QuestionPositions:
    """How the retrieval pass places a question of ``Lq`` tokens over ``P`` retrieved tokens."""

    query: Tensor
    """``[Lq]`` (M-RoPE: ``[3, Lq]``) positions of the question's queries."""
    question_keys: Tensor
    """``[Lq]`` (``[3, Lq]``) positions of the question's own keys."""
    memory: Tensor | None
    """``[P]`` (``[3, P]``) positions to rotate the retrieved (already rotated) keys at once more;
    None: as they are."""
    align: Align
    """Causal mask alignment of the ``[Lq, P + Lq]`` score matrix."""


def question_positions(retrieved: int, lq: int, mode: str, device) -> QuestionPositions:  # type: ignore[no-untyped-def]
    """The retrieval pass's positions (``mode``: ``"reference"`` or ``"consistent"``)."""
    ar = torch.arange(lq, device=device)
    if mode == "reference":
        return QuestionPositions(ar, retrieved + ar, torch.arange(retrieved, device=device), "upper_left")
    return QuestionPositions(retrieved + ar, retrieved + ar, None, "bottom_right")


def answer_positions(cache_length: int, length: int, device) -> Tensor:  # type: ignore[no-untyped-def]
    """Positions of ``length`` prompt or decoded tokens appended to an answer cache of ``cache_length``."""
    return torch.arange(cache_length, cache_length + length, device=device)


# ------------------------------------------------------------------ M-RoPE
def rope_3d(x: Tensor, positions: Tensor, rotary: RopeFn) -> Tensor:
    """``x`` ``[heads, L, d]`` rotated at ``positions`` ``[3, L]`` by the target's rotary (float32)."""
    cos, sin = rotary(positions)
    return rotate(x, cos.to(x.device), sin.to(x.device))


def shift_keys(keys: Tensor, shifts: Tensor, rotary: RopeFn) -> Tensor:
    """Rotated ``keys`` ``[kvh, L, d]`` moved by ``shifts`` ``[L]`` on all three axes (in ``keys``'
    dtype): angles add, so a key rotated at ``p`` becomes the key at ``p + shift``. Rows with a
    shift of 0 come back bit for bit."""
    if not bool(shifts.any()):
        return keys
    shifts = shifts.to(keys.device)
    moved = rope_3d(keys, shifts[None].expand(3, -1), rotary).to(keys.dtype)
    return torch.where((shifts != 0)[None, :, None], moved, keys)


def encode_shift(sinks: Tensor, window: Sequence[tuple[Tensor, int]], chunk_start: int, rule: str) -> int:
    """``sigma``: a chunk starting at stream position ``chunk_start`` is encoded at its stream
    positions plus ``sigma``. ``window``: ``(positions [3, n], start)`` of the frames the chunk
    attends (time order, the newest ones), ``sinks`` ``[3, S]``; ``rule``: ``"window"`` or
    ``"absolute"``."""
    if rule == "absolute":
        return 0
    starts = [start for _, start in window]
    advances = frame_advances(starts, chunk_start) if starts else []
    spans = [FrameSpan(pos, start, a) for (pos, start), a in zip(window, advances, strict=True)]
    return retrieved_positions(sinks, spans).question - chunk_start


def question_positions_3d(memory: Tensor, question: int, lq: int, mode: str) -> QuestionPositions:
    """The retrieval pass under M-RoPE over a memory placed at ``memory`` ``[3, P]`` with the question
    at ``question`` (``mode``: ``"reference"`` or ``"consistent"``, as :func:`question_positions`)."""
    at = text_positions(question, lq, 3, memory.device)
    if mode == "reference":
        return QuestionPositions(text_positions(0, lq, 3, memory.device), at, memory, "upper_left")
    return QuestionPositions(at, at, None, "bottom_right")
