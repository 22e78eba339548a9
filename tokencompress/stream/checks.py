"""The checks a stream applies to a question and to raw token ids before anything is prefilled.

Bad arguments surface as one :class:`~tokencompress.api.errors.ConfigError` line naming the
argument, what was wrong and the fix, never as a torch error from deep inside the decoder (and
never as a silently empty answer); the stream is untouched when they are refused.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..api.errors import ConfigError

__all__ = ["check_ids", "check_ask", "frame_indices"]


def _vocab_size(target: Any) -> int | None:
    embeddings = target.model.get_input_embeddings()
    return getattr(embeddings, "num_embeddings", None)


def check_ids(ids: Any, target: Any, what: str) -> Tensor:
    """``ids`` as a non-empty 1-D long tensor of ids inside the model's vocabulary, or a one-line error."""
    if not isinstance(ids, Tensor):
        raise ConfigError(f"{what}: expected a 1-D tensor of token ids, got {type(ids).__name__}")
    if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise ConfigError(
            f"{what}: token ids must be an integer tensor, got {ids.dtype}; use torch.tensor(ids, dtype=torch.long)"
        )
    if ids.device.type == "meta":
        raise ConfigError(f"{what}: token ids are on the meta device and hold no values; give real ids")
    if ids.dim() != 1:
        raise ConfigError(
            f"{what}: token ids must be a 1-D tensor [L], got shape {tuple(ids.shape)}; "
            "use ids.reshape(-1) for one sequence"
        )
    if ids.numel() == 0:
        raise ConfigError(f"{what}: token ids are empty; give at least one token id")
    vocab = _vocab_size(target)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        bad = low if low < 0 else high
        limit = f"0..{vocab - 1}" if vocab is not None else "ids >= 0"
        raise ConfigError(
            f"{what}: token id {bad} is outside the model's vocabulary ({limit}); "
            "encode text with the model's own tokenizer"
        )
    return ids.long()


def _max_new_tokens(n: Any) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(
            f"ask(max_new_tokens={n!r}): must be an integer >= 1 (the answer's length in tokens)"
        )
    return int(n)


def frame_indices(frames: Any) -> list[int]:
    """Stream frame indices as ints (numpy and 0-d integer tensors accepted; floats and bools refused)."""
    if isinstance(frames, (str, bytes)) or not isinstance(frames, (Sequence, np.ndarray, Tensor)):
        raise ConfigError(
            f"ask(frames=...): expected a list of frame indices, got {type(frames).__name__}; "
            "give e.g. frames=[0, 4, 9]"
        )
    out = []
    for i, f in enumerate(frames):
        try:
            if isinstance(f, (bool, np.bool_)) or (isinstance(f, Tensor) and f.dtype == torch.bool):
                raise TypeError
            out.append(operator.index(f))
        except TypeError:
            raise ConfigError(
                f"ask(frames=...): frame indices must be integers, got {f} ({type(f).__name__}) at "
                f"position {i}; give stream frame indices such as [0, 4, 9]"
            ) from None
    return out


def check_ask(
    target: Any, question: Any, max_new_tokens: Any, frames: Any, kv: Any
) -> tuple[str | Tensor, list[int] | None]:
    """Refuse a bad question, answer length or ``frames`` before the stream moves; returns the
    question (ids as a long tensor) and the frame indices as ints."""
    if isinstance(question, str):
        if not question.strip():
            raise ConfigError("ask(question): the question is empty; give a question (or its token ids)")
    else:
        question = check_ids(question, target, "ask(question)")
    _max_new_tokens(max_new_tokens)
    if frames is None:
        return question, None
    if kv is None:
        raise ConfigError("ask(frames=...): external retrieval needs a kv_cache strategy such as rekv")
    return question, frame_indices(frames)
