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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ...kernels.rope import cos_sin, rotate

__all__ = ["QuestionPositions", "rope", "chunk_positions", "question_positions", "answer_positions"]

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
    """``[Lq]`` positions of the question's queries."""
    question_keys: Tensor
    """``[Lq]`` positions of the question's own keys."""
    memory: Tensor | None
    """``[P]`` positions to rotate the retrieved (already rotated) keys at once more; None: as stored."""
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
