"""Every registered strategy on every registered target, generated from the registry.

A pair either runs a short stream with the invariants holding, or is refused when the pipeline
is bound, with a message that names the strategy, the target and the reason. Third-party
strategies and targets (any installed plugin) are covered the same way.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames
from tokencompress import CompatibilityError, Pipeline, Registry, Stage

REGISTRY = Registry()
PAIRS = [(s, t) for s in sorted(REGISTRY.strategies) for t in sorted(REGISTRY.targets)]
FRAMES = random_frames(4, seed=7)
_MODELS: dict[str, torch.nn.Module] = {}


def tiny(target_name: str) -> torch.nn.Module:
    if target_name not in _MODELS:
        _MODELS[target_name] = REGISTRY.target(target_name).tiny_model()
    return _MODELS[target_name]


def pipeline_for(strategy_name: str, target_name: str, model: torch.nn.Module) -> Pipeline:
    cls = REGISTRY.strategy(strategy_name)
    infos = REGISTRY.target(target_name)(model).stage_info()
    info = infos.get(cls.stage, infos[Stage.PRE_PREFILL])  # kv_cache strategies size by the LLM tokens
    step = {"strategy": strategy_name, **cls.conformance_params(info)}
    return Pipeline.from_dict(
        {"target": target_name, "stream": {"frames_per_chunk": 2}, "stages": {cls.stage.value: [step]}},
        REGISTRY,
    )


@pytest.mark.parametrize(("strategy_name", "target_name"), PAIRS, ids=[f"{s}@{t}" for s, t in PAIRS])
def test_strategy_runs_or_is_refused_on_target(strategy_name: str, target_name: str) -> None:
    model = tiny(target_name)
    pipe = pipeline_for(strategy_name, target_name, model)
    try:
        pipe.bind(model)
    except CompatibilityError as exc:
        msg = str(exc)
        assert strategy_name in msg and target_name in msg, f"refusal must name both sides: {msg}"
        return
    layers = pipe.bind(model).target.vit_layers()
    with pipe.apply(model) as bound:
        stream = bound.stream()
        stats = stream.add_frames(FRAMES)
        per_frame = bound.target.stage_info()[Stage.PRE_PREFILL].tokens_per_frame
        for chunk in stats:
            assert chunk.pre_prefill[0] <= per_frame * chunk.frames
            assert 0 < chunk.pre_prefill[1] <= chunk.pre_prefill[0]
            planned = bound.planned_tokens(Stage.PRE_PREFILL, chunk.frames)
            if planned is not None and not bound.by_stage[Stage.POST_VIT]:
                assert chunk.pre_prefill[1] == planned
        # every kept token reaches the cache; a target may add delimiters (Qwen's vision start/end)
        assert stream.llm.visual_tokens == sum(c.pre_prefill[1] for c in stats) <= stream.cache_tokens()
        answer = stream.ask(torch.tensor([5, 6, 7]), max_new_tokens=2)
        assert torch.isfinite(answer.first_logits).all()
    assert not any("forward" in layer.__dict__ for layer in layers)
    assert not any(layer._forward_pre_hooks for layer in layers)
    layout = pipe.bind(model).target.decoder_layout()
    assert layout is None or not any("forward" in attn.__dict__ for attn in layout.attention)


def test_matrix_covers_every_registration() -> None:
    assert {"stc_cacher", "stc_pruner", "tome", "vidcom2"} <= set(REGISTRY.strategies)
    assert "llava_onevision" in REGISTRY.targets
    assert len(PAIRS) == len(REGISTRY.strategies) * len(REGISTRY.targets)
