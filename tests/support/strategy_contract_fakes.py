"""Plugin strategies that break their run-time contracts on purpose, as one package ``pkg-contracts``."""

from __future__ import annotations

from typing import Any

import torch

from tests.support.plugin_fakes import KeepFirst, plugin
from tokencompress import ChunkInfo, Plan, VisualTokens
from tokencompress.api.scoring_pruner import FrameLayout


class Overshoot(KeepFirst):
    """Promises 4 tokens a frame (``planned_count``) and keeps 5."""

    name = "overshoot"

    def frame_budgets(self, layout: FrameLayout) -> torch.Tensor:
        return torch.clamp(layout.counts, max=5)


class Adaptive(Overshoot):
    """Keeps the same 5 but says its count follows the data: exempt from the check."""

    name = "adaptive"
    dynamic_count = True

    def planned_count(self, tokens_per_frame: int, frames: int) -> int | None:
        return None


class ShortScores(KeepFirst):
    """``score()`` gives one score too few."""

    name = "short_scores"

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> torch.Tensor:
        return super().score(tokens, state, chunk)[:-1]


class ListScores(KeepFirst):
    name = "list_scores"

    def score(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Any:
        return super().score(tokens, state, chunk).tolist()


class LongBudgets(KeepFirst):
    """A ``plan()`` of its own whose budgets have one entry too many."""

    name = "long_budgets"

    def plan(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Plan:
        layout = FrameLayout.of(tokens)
        return Plan(self.score(tokens, state, chunk), torch.full((layout.num_frames + 1,), 2), layout)


class NoPlan(KeepFirst):
    name = "no_plan"

    def plan(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> Any:
        return (self.score(tokens, state, chunk), None)


CONTRACTS = plugin("pkg-contracts", [Overshoot, Adaptive, ShortScores, ListScores, LongBudgets, NoPlan])


def contract_pipeline(name: str, frames_per_chunk: int = 1) -> Any:
    from tokencompress import Pipeline, Registry

    stages = {"pre_prefill": [{"strategy": name}]}
    return Pipeline.from_dict(
        {"stages": stages, "stream": {"frames_per_chunk": frames_per_chunk}}, Registry(plugins=[CONTRACTS])
    )
