"""DyCoke's dynamic KV pruning at decode time, as a kv_cache decode policy.

Tao, Qin, You, Sui and Wang, "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language
Models", CVPR 2025, https://arxiv.org/abs/2411.15024; reference code KD-TAO/DyCoke (commit dd74634).
The token stage (TTM) is :mod:`tokencompress.strategies.dycoke_ttm`; ``pipelines/dycoke.yaml`` runs both.

At every decode step (one new token), layer ``l - 1``'s attention probabilities of the new token over
the whole cache ``[H, S]`` are averaged over the H query heads and restricted to the cache's visual
entries, ``v`` ``[n_visual]``. ``sim = cosine(v, v_prev)`` (0 when there is no previous step, or when
the visual entries changed in number); ``v_prev = v`` at every step. When ``sim < threshold`` (0.9)
the step prunes: layers ``l, l+1, ...`` attend to every non-visual entry, the
``int(n_visual * (1 - p))`` visual entries with the largest ``v`` and the token itself; otherwise
every layer attends to the whole cache. Nothing is removed: a pruned entry may be attended again at
the next step, and keys keep the positions they were rotated at.

Parameters, reproducing the reference by default:

* ``l`` (3): the first restricted layer; layer ``l - 1`` decides (the reference's off-by-one, Q10);
* ``p`` (0.7, the paper's table; lmms-eval's default is 0.8): the fraction of visual entries
  **pruned** at a pruning step (p = 0 keeps them all, so answers equal the plain ones);
* ``threshold`` (0.9, strict ``<``);
* ``on_stable``: ``full`` (Q11: a stable step prunes nothing) or ``reuse_previous`` (keep the latest
  selection of this answer);
* ``reset_per_question`` (true): the previous step's attention is forgotten between questions
  (the reference keeps it across generate calls, Q15: false for parity);
* ``span_excludes_last`` (false): drop the last visual entry from the prunable span, as the
  reference does with its ``N_ttm - 1`` span length (Q13; true for parity).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError
from torch import Tensor

from ..api.decode_policy import DecodePolicy, DecodePolicyState
from ..api.errors import BudgetError
from ..api.kv_cache_strategy import KVBuild
from ..api.strategy import StrategyParams
from ..api.target import Target

__all__ = ["DycokeKV", "DycokeKVParams", "DycokeKVState", "num_keep"]


class DycokeKVParams(StrategyParams):
    l: int = Field(  # noqa: E741 - the paper's name
        3, ge=1, description="First decoder layer restricted at a pruning step; layer l-1's attention decides"
    )
    p: float = Field(
        0.7,
        description="Fraction of the visual entries pruned at a pruning step, in [0, 1) (0 keeps them all)",
    )
    threshold: float = Field(
        0.9, ge=-1.0, le=1.0, description="Prune when the cosine with the previous step is below this"
    )
    on_stable: Literal["full", "reuse_previous"] = Field(
        "full", description="A step at or above the threshold: full cache (reference) or the last selection"
    )
    reset_per_question: bool = Field(
        True, description="Forget the previous step's attention at each question (false: the reference)"
    )
    span_excludes_last: bool = Field(
        False, description="Keep the last visual entry out of the prunable span (true: the reference)"
    )

    @field_validator("p")
    @classmethod
    def _pruned_fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise PydanticCustomError(
                "dycoke_kv_p",
                "p is the fraction of the visual entries pruned at a pruning step, so it must lie in [0, 1) "
                "(1 would attend to no video at all); use e.g. 0.7 (the paper) or 0 to keep every entry",
            )
        return value


def num_keep(n_visual: int, p: float) -> int:
    """``int(n_visual * (1 - p))`` in IEEE double, as the reference (``1 - 0.8`` keeps 0 of 4)."""
    return int(n_visual * (1 - p))


class DycokeKVState(DecodePolicyState):
    """One stream's DyCoke policy: the previous step's visual attention and what the steps did."""

    def __init__(self, params: DycokeKVParams) -> None:
        self.p = params
        self.decide_layer = params.l - 1
        self.v_prev: Tensor | None = None
        self.selection: Tensor | None = None  # this answer's latest selection (on_stable reuse_previous)
        self.steps = self.pruned = self.reused = 0
        self.visual_seen = self.visual_kept = 0
        self.kept_last: list[int] = []  # visual entries each step of the latest answer attended to
        self.last: dict[str, Any] = {}  # the latest step's decision (tests, debugging)

    def begin_question(self) -> None:
        if self.p.reset_per_question:
            self.v_prev = None
        self.selection, self.kept_last = None, []

    def decide(self, probs: Tensor, visual: Tensor) -> Tensor | None:
        """The per-step rule on ``probs`` ``[H, S]`` and ``visual`` ``[S]`` (see the module docstring)."""
        visual = visual.to(device=probs.device, dtype=torch.bool).clone()
        if self.p.span_excludes_last and bool(visual.any()):
            visual[int(visual.nonzero()[-1])] = False
        span = visual.nonzero().flatten()
        v = probs.float().mean(dim=0)[span]
        prev = self.v_prev
        if prev is None or prev.numel() != v.numel() or v.numel() == 0:
            sim = 0.0
        else:
            sim = float(F.cosine_similarity(v, prev.to(v.device), dim=0, eps=1e-8))
        self.v_prev = v
        pruned = sim < self.p.threshold
        top: Tensor | None = None
        if pruned:
            n = num_keep(span.numel(), self.p.p)
            top = span[torch.topk(v, n, sorted=False).indices].sort().values
            self.selection = top
        elif self.p.on_stable == "reuse_previous":
            top = self.selection
        keep = None if top is None else torch.cat(((~visual).nonzero().flatten(), top)).sort().values
        self._count(
            pruned, top is not None and not pruned, span.numel(), None if top is None else top.numel()
        )
        self.last = {
            "similarity": sim,
            "pruned": pruned,
            "image_attention": v,
            "top_visual": top,
            "kept": keep,
        }
        return keep

    def _count(self, pruned: bool, reused: bool, n_visual: int, kept: int | None) -> None:
        self.steps += 1
        self.pruned += int(pruned)
        self.reused += int(reused)
        self.visual_seen += n_visual
        attended = n_visual if kept is None else kept
        self.visual_kept += attended
        self.kept_last.append(attended)

    def stats(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        return {
            "decode_steps": self.steps,
            "pruned_steps": self.pruned,
            "reused_steps": self.reused,
            "full_steps": self.steps - self.pruned - self.reused,
            "visual_entries_mean": self.visual_seen / self.steps,
            "visual_kept_mean": self.visual_kept / self.steps,
            "visual_kept_last_answer": list(self.kept_last),
        }


class DycokeKV(DecodePolicy):
    """Per decode step, one layer's attention to the visual entries chooses what later layers attend to."""

    name = "dycoke_kv"
    Params = DycokeKVParams
    summary = (
        "DyCoke decode-time KV pruning: layer l-1's attention picks the visual entries layers >= l attend "
        "to, re-decided only when it moved (a decode policy; combines with any kv_cache memory)"
    )
    paper = (
        "Tao et al., DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models, CVPR 2025"
    )
    reference = "KD-TAO/DyCoke@dd74634"

    def check_build(self, build: KVBuild) -> None:
        p: DycokeKVParams = self.params  # type: ignore[assignment]
        depth = build.layout.num_layers
        if p.l >= depth:
            raise BudgetError(
                f"dycoke_kv.l = {p.l} leaves no layer to restrict: target '{build.target}' has {depth} decoder "
                f"layers (0..{depth - 1}); use l between 1 and {depth - 1}"
            )

    def new_policy(self, target: Target, build: KVBuild) -> DycokeKVState:
        return DycokeKVState(self.params)  # type: ignore[arg-type]

    @classmethod
    def conformance_params(cls, info) -> dict:  # type: ignore[no-untyped-def]
        return {"l": 1}
