"""The ``kv_cache`` stage's second kind of strategy: an answer-time decode policy.

A :class:`~tokencompress.api.kv_cache_strategy.KVCacheStrategy` is a *memory*: it decides what the
decoder keeps of a stream while frames arrive. A :class:`DecodePolicy` decides nothing about what is
kept; at every **decode step** of an answer (a decoder call with one new token) it chooses which
entries of the cache the answer already runs on the later decoder layers attend to. A pipeline's
``stages.kv_cache`` list holds at most one memory and at most one decode policy, in any order.

When it runs, and what it sees:

* only while a question is answered, only for decode steps (the prompt's prefill, encoding and
  retrieval never reach it);
* at layer :attr:`DecodePolicyState.decide_layer` of each step it receives ``probs`` ``[H, S]``
  (float32): the new token's attention probabilities, ``softmax(q . k^T / sqrt(d))`` of each query
  head over all ``S`` entries of the cache the step attends (the token itself last), with RoPE at
  the positions that cache uses, and ``visual`` ``[S]`` bool (which of those entries hold video
  tokens: several ranges in a multi-chunk stream). It returns the ascending entry indices ``[K]``
  the layers after ``decide_layer`` attend to, or None for every entry;
* the cache it works over is whatever the answer runs on: the whole stream without a memory, the
  resident window under ``sliding_window``, ``[sinks ; retrieved frames ; prompt ; answer]`` under
  ``rekv``. Nothing is removed from that cache and positions never change, so a policy needs no
  renumbering on M-RoPE targets either.

Why a hook of the kv_cache stage and not a sixth stage: a policy acts on the decoder's cache, the
object the kv_cache stage owns (its visual-entry map, its attention routing, its answer phase),
and it has to run inside whatever attention the memory computes (ReKV computes its own); a stage
of its own would need the same routing and the same answer phase, and could only be ordered after
kv_cache. It never modifies the memory, so a chunk's snapshot/restore and the end of a question
have nothing to undo for it; its own state (the previous step's attention) is per stream.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from .strategy import Strategy
from .types import Stage

if TYPE_CHECKING:
    from .kv_cache_strategy import KVBuild
    from .target import Target

__all__ = ["DecodePolicy", "DecodePolicyState", "DecodeStep"]


class DecodePolicyState:
    """One stream's decode policy. ``decide_layer``: the layer whose attention decides each step."""

    decide_layer: int = 0

    def begin_question(self) -> None:  # noqa: B027 - optional hook
        """Called before an answer's first decode step."""

    @abstractmethod
    def decide(self, probs: Tensor, visual: Tensor) -> Tensor | None:
        """``probs`` ``[H, S]`` float32, ``visual`` ``[S]`` bool: ascending entries ``[K]`` (int64) the
        layers after ``decide_layer`` attend to at this step, or None for all ``S``."""

    def end_question(self) -> None:  # noqa: B027 - optional hook
        """Called after the answer (also on failure)."""

    def stats(self) -> dict[str, Any]:
        """What the policy did so far, for the ``run`` table and ``--json`` (empty: nothing to report)."""
        return {}


class DecodeStep:
    """The decode steps of one answer: routes each layer's keys through ``state``.

    The attention of decoder layer ``layer`` calls :meth:`keys` with a function computing the new
    token's probabilities ``[H, S]`` and one computing the visual mask ``[S]`` (both called only at
    the deciding layer). Layer 0 starts a step; every layer up to ``decide_layer`` attends to the
    whole cache, later layers to what the step decided.
    """

    def __init__(self, state: DecodePolicyState) -> None:
        self.state = state
        self.keep: Tensor | None = None
        self.attended: list[int] = []
        """Keys each layer attended to at the latest step."""

    def keys(
        self, layer: int, length: int, probs: Callable[[], Tensor], visual: Callable[[], Tensor]
    ) -> Tensor | None:
        """The entries (of ``length``) layer ``layer`` attends to at this step; None: all of them."""
        if layer == 0:
            self.keep, self.attended = None, []
        chosen = None
        if layer == self.state.decide_layer:
            self.keep = self.state.decide(probs(), visual())
        elif layer > self.state.decide_layer:
            chosen = self.keep
        self.attended.append(length if chosen is None else int(chosen.numel()))
        return chosen


class DecodePolicy(Strategy):
    """A ``kv_cache`` decode policy. Subclasses implement :meth:`new_policy` and may refine
    :meth:`check_build` (the decoder's depth is in ``build.layout``)."""

    stage = Stage.KV_CACHE
    changes_count = False
    stateful = True
    decode_policy: ClassVar[bool] = True

    def check_build(self, build: KVBuild) -> None:  # noqa: B027 - optional hook
        """Refuse, at build time, parameters this decoder cannot run."""

    @abstractmethod
    def new_policy(self, target: Target, build: KVBuild) -> DecodePolicyState:
        """A fresh policy state for one stream."""
