"""The plugin authors' kit: each check passes on the built-ins and fails on a plugin that breaks its promise."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.support.plugin_fakes import KeepFirst, plugin
from tokencompress import BlockStrategy, Capability, Registry, Stage, StageInfo
from tokencompress.strategies.stc_cacher import StcCacher
from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget
from tokencompress.testing import check_block_strategy, check_pair, check_target, moving_frames


def test_block_check_passes_on_the_cacher(tiny_llava_ov):
    check_block_strategy(StcCacher(update_token_ratio=0.25, cache_interval=2), tiny_llava_ov)


class Leaky(BlockStrategy):
    """Keeps its 'state' on the instance, so every stream shares it: the bug the check exists for."""

    name = "leaky"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def block_forward(self, call, hidden, run_next):
        self.calls += 1
        return run_next(hidden + 1e-3 * self.calls)


class Shrinks(BlockStrategy):
    """Drops a token per layer without declaring changes_count."""

    name = "shrinks"

    def block_forward(self, call, hidden, run_next):
        return run_next(hidden)[:, :-1]


def test_block_check_catches_state_shared_between_streams(tiny_llava_ov):
    with pytest.raises(AssertionError, match="fresh stream gave a different output"):
        check_block_strategy(Leaky(), tiny_llava_ov)


def test_block_check_catches_an_undeclared_count_change(tiny_llava_ov):
    with pytest.raises(Exception, match=r"shrinks|token count|does not hold"):
        check_block_strategy(Shrinks(), tiny_llava_ov)


def test_target_check_passes_on_llava_onevision():
    results = check_target(LlavaOnevisionTarget, strategies=["stc_pruner", "tome"])
    assert [(r.strategy, r.refusal) for r in results] == [("stc_pruner", None), ("tome", None)]


class LyingTarget(LlavaOnevisionTarget):
    """Promises one token per frame more at pre_prefill than its vision path produces."""

    name = "lying_llava"

    def stage_info(self) -> dict[Stage, StageInfo]:
        infos = dict(super().stage_info())
        pre = infos[Stage.PRE_PREFILL]
        infos[Stage.PRE_PREFILL] = StageInfo(pre.stage, pre.tokens_per_frame + 1, pre.dim, pre.grid)
        return infos

    @classmethod
    def matches(cls, model: Any) -> bool:
        return getattr(model, "_lying", False)

    @classmethod
    def tiny_model(cls, seed: int = 0) -> torch.nn.Module:
        model = LlavaOnevisionTarget.tiny_model(seed)
        model._lying = True
        return model


def test_target_check_catches_a_stage_info_that_lies():
    reg = Registry(plugins=[plugin("pkg-lying", targets=[LyingTarget])])
    with pytest.raises(AssertionError, match="stage_info promises"):
        check_target(LyingTarget, reg, strategies=[])


class KeepsTooMany(KeepFirst):
    """Announces tokens_per_frame but keeps one more row per frame."""

    name = "keeps_too_many"

    def apply(self, tokens, state, chunk):
        out = super().apply(tokens, state, chunk)
        extra = [i for i in range(tokens.count) if i not in set(out.source.tolist())][:1]
        return tokens.take(torch.tensor(sorted([*out.source.tolist(), *extra])))


def test_matrix_cell_catches_a_broken_count(tiny_llava_ov):
    reg = Registry(plugins=[plugin("pkg-many", [KeepsTooMany])])
    with pytest.raises(AssertionError, match="planned"):
        check_pair(reg, "keeps_too_many", "llava_onevision", model=tiny_llava_ov, frames=moving_frames(2))


class NeedsCls(KeepFirst):
    """A pruner that needs a class token, which no Qwen tower has."""

    name = "needs_cls"
    needs = frozenset({Capability.CLS_TOKEN})


def test_matrix_cell_reports_a_refusal_naming_both_sides(tiny_llava_ov):
    reg = Registry(plugins=[plugin("pkg-cls", [NeedsCls])])
    result = check_pair(reg, "needs_cls", "qwen2_vl")
    assert result.refusal is not None and "needs_cls" in result.refusal and "qwen2_vl" in result.refusal
    assert "cls_token" in result.refusal
