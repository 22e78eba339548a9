"""Every registered strategy on every registered target, generated from the registry.

A pair either runs a short stream with the invariants holding (planned counts met at every
token stage, the conformance check of :mod:`tokencompress.testing` passing on the real tokens
the target hands the strategy, the model restored afterwards), or is refused when the
pipeline is bound, with a message that names the strategy, the target and the reason.
Third-party strategies and targets (any installed plugin) are covered the same way. Which
built-in pairs are refused is a decision, so it is written down here and checked.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames
from tokencompress import CompatibilityError, Pipeline, Registry, Stage, TokenStrategy
from tokencompress.testing import check_token_strategy

REGISTRY = Registry()
PAIRS = [(s, t) for s in sorted(REGISTRY.strategies) for t in sorted(REGISTRY.targets)]
FRAMES = random_frames(4, seed=7)
_MODELS: dict[str, torch.nn.Module] = {}

REFUSED: dict[tuple[str, str], str] = {
    # (strategy, target): what the refusal must name
    ("tome", "qwen2_vl"): "position_free_attention",
    ("tome", "qwen2_5_vl"): "position_free_attention",
    ("visionzip", "qwen2_vl"): "attention",
    ("visionzip", "qwen2_5_vl"): "attention",
}
"""Built-in pairs that are refused, and the capability each refusal names."""


def tiny(target_name: str) -> torch.nn.Module:
    if target_name not in _MODELS:
        _MODELS[target_name] = REGISTRY.target(target_name).tiny_model()
    return _MODELS[target_name]


def pipeline_for(strategy_name: str, target_name: str, model: torch.nn.Module) -> Pipeline:
    cls = REGISTRY.strategy(strategy_name)
    info = REGISTRY.target(target_name)(model).stage_info()[cls.stage]
    step = {"strategy": strategy_name, **cls.conformance_params(info)}
    return Pipeline.from_dict(
        {"target": target_name, "stream": {"frames_per_chunk": 2}, "stages": {cls.stage.value: [step]}},
        REGISTRY,
    )


def _is_builtin(strategy_name: str, target_name: str) -> bool:
    return (
        REGISTRY.strategies[strategy_name].package == "tokencompress"
        and REGISTRY.targets[target_name].package == "tokencompress"
    )


def _refusal(strategy_name: str, target_name: str) -> str | None:
    model = tiny(target_name)
    try:
        pipeline_for(strategy_name, target_name, model).bind(model)
    except CompatibilityError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("strategy_name", "target_name"), PAIRS, ids=[f"{s}@{t}" for s, t in PAIRS])
def test_strategy_runs_or_is_refused_on_target(strategy_name: str, target_name: str) -> None:
    model = tiny(target_name)
    pipe = pipeline_for(strategy_name, target_name, model)
    refusal = _refusal(strategy_name, target_name)
    if refusal is not None:
        assert strategy_name in refusal and target_name in refusal, f"refusal must name both sides: {refusal}"
        return
    layers = pipe.bind(model).target.vit_layers()
    seen: list[tuple] = []  # (stage, tokens in, chunk) of every token stage the strategy ran at
    with pipe.apply(model) as bound:
        strategy = bound.steps[0]
        run_stage = bound.run_stage

        def spy(stage, tokens, states, chunk, *rest):
            if strategy in bound.by_stage[stage]:
                seen.append((stage, tokens, chunk))
            return run_stage(stage, tokens, states, chunk, *rest)

        bound.run_stage = spy
        stream = bound.stream()
        stats = stream.add_frames(FRAMES)
        for chunk in stats:
            vit_out = bound.target.stage_info()[Stage.POST_VIT].tokens_per_frame
            assert chunk.post_vit[0] == vit_out * bound.target.token_frames(chunk.frames)
            for stage, (_, n_out) in (
                (Stage.POST_VIT, chunk.post_vit),
                (Stage.PRE_PREFILL, chunk.pre_prefill),
            ):
                planned = bound.planned_tokens(stage, chunk.frames)
                if planned is not None and (stage == Stage.POST_VIT or not bound.by_stage[Stage.POST_VIT]):
                    assert n_out == planned, f"{stage.value}: {n_out} tokens out, planned {planned}"
            assert 0 < chunk.pre_prefill[1] <= chunk.pre_prefill[0]
        # every kept token reaches the cache; a target may add delimiters (Qwen's vision start/end)
        assert stream.llm.visual_tokens == sum(c.pre_prefill[1] for c in stats) <= stream.llm.length
        answer = stream.ask(torch.tensor([5, 6, 7]), max_new_tokens=2)
        assert torch.isfinite(answer.first_logits).all()
    assert not any("forward" in layer.__dict__ for layer in layers)
    assert not any(layer._forward_pre_hooks for layer in layers)
    if isinstance(strategy, TokenStrategy):
        assert len(seen) == len(stats), "the token strategy did not run on every chunk"
        # the conformance check on the very tokens (and probes) this target handed the strategy
        check_token_strategy(strategy, [t for _, t, _ in seen], chunk_infos=[c for _, _, c in seen])


def test_built_in_refusals_are_exactly_the_listed_ones() -> None:
    """Not true by construction: every built-in pair is bound here and compared with REFUSED."""
    refused = {}
    for s, t in PAIRS:
        if _is_builtin(s, t):
            msg = _refusal(s, t)
            if msg is not None:
                refused[(s, t)] = msg
    assert set(refused) == set(REFUSED), "a built-in pair changed between running and refused"
    for pair, msg in refused.items():
        assert REFUSED[pair] in msg, f"{pair}: refusal does not name {REFUSED[pair]!r}: {msg}"


def test_matrix_covers_every_registration() -> None:
    """A fresh registry sees the same strategies and targets the matrix was generated from,
    including the installed example plugin's strategy."""
    fresh = Registry()
    assert sorted((s, t) for s in fresh.strategies for t in fresh.targets) == sorted(PAIRS)
    assert {"stc_cacher", "stc_pruner", "tome", "vidcom2", "visionzip", "uniform_grid"} <= set(
        fresh.strategies
    )
    assert {"llava_onevision", "qwen2_vl", "qwen2_5_vl"} <= set(fresh.targets)
