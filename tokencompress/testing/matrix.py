"""The strategy × target matrix of an installed registry, as a pytest helper a plugin repo can use.

``parametrize_matrix()`` generates one test case per registered (strategy, target) pair;
``check_pair`` runs one: either the pipeline is refused at bind time with a message naming
both sides, or a short stream runs with every promise checked (planned counts at each token
stage, the token-strategy conformance check on the very tokens and probes the target handed
the strategy, every kept token in the cache, a finite answer, the model restored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api.errors import CompatibilityError, PluginFault
from ..api.strategy import TokenStrategy
from ..api.types import Stage
from ..pipeline.pipeline import Pipeline
from ..plugins.registry import Registry
from .frames import moving_frames
from .token_strategy import check_token_strategy

__all__ = ["PairResult", "matrix_pairs", "parametrize_matrix", "check_pair", "pipeline_for"]


@dataclass(frozen=True)
class PairResult:
    strategy: str
    target: str
    refusal: str | None
    """The bind-time refusal, or None when the pair ran."""


def _fail(message: str) -> None:
    raise AssertionError(message)


def matrix_pairs(registry: Registry) -> list[tuple[str, str]]:
    return [(s, t) for s in sorted(registry.strategies) for t in sorted(registry.targets)]


def parametrize_matrix(registry: Registry | None = None) -> Any:
    """``@parametrize_matrix()`` on ``def test_x(strategy_name, target_name)``: one case per pair."""
    import pytest

    pairs = matrix_pairs(registry if registry is not None else Registry())
    return pytest.mark.parametrize(
        ("strategy_name", "target_name"), pairs, ids=[f"{s}@{t}" for s, t in pairs]
    )


def pipeline_for(registry: Registry, strategy_name: str, target_name: str, model: nn.Module) -> Pipeline:
    """A one-step pipeline with the strategy's ``conformance_params`` for this target's layout."""
    cls = registry.strategy(strategy_name)
    infos = registry.target(target_name)(model).stage_info()
    info = infos.get(cls.stage, infos[Stage.PRE_PREFILL])  # kv_cache strategies size by the LLM tokens
    step = {"strategy": strategy_name, **cls.conformance_params(info)}
    return Pipeline.from_dict(
        {"target": target_name, "stream": {"frames_per_chunk": 2}, "stages": {cls.stage.value: [step]}},
        registry,
    )


def check_pair(
    registry: Registry,
    strategy_name: str,
    target_name: str,
    model: nn.Module | None = None,
    frames: np.ndarray | None = None,
) -> PairResult:
    """Run one matrix cell (see the module docstring); AssertionError names what broke."""
    model = model if model is not None else registry.target(target_name).tiny_model()
    frames = frames if frames is not None else moving_frames(4, seed=7)
    pipe = pipeline_for(registry, strategy_name, target_name, model)
    try:
        pipe.bind(model)
    except CompatibilityError as exc:
        msg = str(exc)
        if strategy_name not in msg or target_name not in msg:
            _fail(f"refusal must name both '{strategy_name}' and '{target_name}': {msg}")
        return PairResult(strategy_name, target_name, msg)
    layers = pipe.bind(model).target.vit_layers()
    seen: list[tuple[Any, Any]] = []  # (tokens in, chunk) of every token stage the strategy ran at
    with pipe.apply(model) as bound:
        strategy = bound.steps[0] if bound.steps else bound.kv  # a kv_cache strategy is not a token step
        run_stage = bound.run_stage

        def spy(stage: Stage, tokens: Any, states: Any, chunk: Any, *rest: Any) -> Any:
            if strategy in bound.by_stage[stage]:
                seen.append((tokens, chunk))
            return run_stage(stage, tokens, states, chunk, *rest)

        bound.run_stage = spy  # type: ignore[method-assign]
        stream = bound.stream()
        try:
            stats = stream.add_frames(frames)
        except PluginFault as exc:  # a promise the stream checks as it runs (a planned count, a shape)
            raise AssertionError(str(exc)) from exc
        infos = bound.target.stage_info()
        for c in stats:
            expected = infos[Stage.POST_VIT].tokens_per_frame * bound.target.token_frames(c.frames)
            if c.post_vit[0] != expected:
                _fail(
                    f"chunk {c.chunk}: {c.post_vit[0]} tokens reached post_vit, stage_info promises {expected}"
                )
            for stage, (_, n_out) in ((Stage.POST_VIT, c.post_vit), (Stage.PRE_PREFILL, c.pre_prefill)):
                planned = bound.planned_tokens(stage, c.frames)
                # a data-dependent post_vit count leaves pre_prefill's input unknown
                if planned is not None and (stage == Stage.POST_VIT or not bound.by_stage[Stage.POST_VIT]):
                    if n_out != planned:
                        _fail(f"chunk {c.chunk} {stage.value}: {n_out} tokens out, planned {planned}")
            if not 0 < c.pre_prefill[1] <= c.pre_prefill[0]:
                _fail(f"chunk {c.chunk}: pre_prefill kept {c.pre_prefill[1]} of {c.pre_prefill[0]}")
        kept = sum(c.pre_prefill[1] for c in stats)
        if not stream.llm.visual_tokens == kept <= stream.cache_tokens():
            _fail(
                f"{kept} kept tokens, {stream.llm.visual_tokens} reached the cache of {stream.cache_tokens()}"
            )
        answer = stream.ask(torch.tensor([5, 6, 7]), max_new_tokens=2)
        if not bool(torch.isfinite(answer.first_logits).all()):
            _fail("the answer's logits are not finite")
    if any("forward" in layer.__dict__ for layer in layers) or any(
        layer._forward_pre_hooks for layer in layers
    ):
        _fail("leaving apply() did not restore the encoder layers")
    if isinstance(strategy, TokenStrategy):
        if len(seen) != len(stats):
            _fail(f"the token strategy ran on {len(seen)} of {len(stats)} chunks")
        check_token_strategy(strategy, [t for t, _ in seen], chunk_infos=[c for _, c in seen])
    return PairResult(strategy_name, target_name, None)
