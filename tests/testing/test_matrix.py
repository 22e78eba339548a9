"""Every registered strategy on every registered target, generated from the registry.

The cell itself is :func:`tokencompress.testing.check_pair` (the kit plugin repos use): a pair
either runs a short stream with every promise checked (planned counts at each token stage,
the token-strategy conformance check on the tokens and probes the target hands the strategy,
the model restored) or is refused at bind time naming the strategy, the target and the
reason. Third-party strategies and targets (any installed plugin) are covered the same way.
Which built-in pairs are refused is a decision, so it is written down here and checked.
"""

from __future__ import annotations

import torch

from tokencompress import Registry
from tokencompress.testing import check_pair, matrix_pairs, moving_frames, parametrize_matrix

REGISTRY = Registry()
FRAMES = moving_frames(4, seed=7)
_MODELS: dict[str, torch.nn.Module] = {}

REFUSED: dict[tuple[str, str], str] = {
    # (strategy, target): what the refusal must name. ToMe and VisionZip run on the Qwen towers
    # (their meaningless options there are refused, see tests/targets/test_qwen_tome_visionzip.py).
    # ReKV and StreamingTOM's memory run on the Qwen M-RoPE targets too (retrieved frames re-placed
    # on all three axes by tokencompress.api.memory_positions).
    # PyramidDrop renumbers positions per stage: a count, meaningless for (t, h, w) triples
    # (positions: keep runs there, tests/strategies/test_fastv_streams.py).
    ("pdrop", "qwen2_vl"): "M-RoPE",
    ("pdrop", "qwen2_5_vl"): "M-RoPE",
    ("pdrop", "qwen3_vl"): "M-RoPE",
}
"""Built-in pairs that are refused, and the capability each refusal names."""


def tiny(target_name: str) -> torch.nn.Module:
    if target_name not in _MODELS:
        _MODELS[target_name] = REGISTRY.target(target_name).tiny_model()
    return _MODELS[target_name]


def _builtin(strategy_name: str, target_name: str) -> bool:
    return (
        REGISTRY.strategies[strategy_name].package == REGISTRY.targets[target_name].package == "tokencompress"
    )


@parametrize_matrix(REGISTRY)
def test_strategy_runs_or_is_refused_on_target(strategy_name: str, target_name: str) -> None:
    result = check_pair(REGISTRY, strategy_name, target_name, model=tiny(target_name), frames=FRAMES)
    if _builtin(strategy_name, target_name):
        assert (result.refusal is not None) == ((strategy_name, target_name) in REFUSED), result
        if result.refusal is not None:
            assert REFUSED[(strategy_name, target_name)] in result.refusal


def test_every_listed_refusal_is_a_registered_built_in_pair() -> None:
    pairs = set(matrix_pairs(REGISTRY))
    assert set(REFUSED) <= pairs
    assert all(_builtin(s, t) for s, t in REFUSED)


def test_matrix_covers_every_registration() -> None:
    """A fresh registry sees the same strategies and targets the matrix was generated from,
    including the installed example plugin's strategy."""
    fresh = Registry()
    assert sorted(matrix_pairs(fresh)) == sorted(matrix_pairs(REGISTRY))
    assert {"stc_cacher", "stc_pruner", "tome", "vidcom2", "visionzip", "uniform_grid"} <= set(
        fresh.strategies
    )
    assert {"llava_onevision", "qwen2_vl", "qwen2_5_vl"} <= set(fresh.targets)
