"""The plugin checks itself with tokencompress's testing kit alone, as any plugin repo can.

It passes the token-strategy conformance check, runs (or is refused with a reason) on every
installed target through the kit's matrix cell, and is used from YAML both installed (entry
point) and as a local file (``--plugin``), with identical results.
"""

from __future__ import annotations

from pathlib import Path

import tokencompress_uniform
from hypothesis import given, settings
from hypothesis import strategies as st
from tokencompress_uniform import UniformGrid

from tokencompress import Pipeline, Registry, VisualTokens
from tokencompress.plugins.local_files import load_plugin_file
from tokencompress.testing import (
    check_pair,
    check_token_strategy,
    moving_frames,
    parametrize_matrix,
    visual_tokens,
)

INSTALLED = Registry()
PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "uniform.yaml"
_MODELS: dict = {}


@settings(max_examples=20, deadline=None)
@given(tokens=visual_tokens(), k=st.integers(1, 30))
def test_kit_conformance(tokens: VisualTokens, k: int) -> None:
    check_token_strategy(UniformGrid(tokens_per_frame=k), tokens, chunks=2)


@parametrize_matrix(INSTALLED)
def test_kit_matrix(strategy_name: str, target_name: str) -> None:
    if strategy_name != "uniform_grid":
        return  # the core's own suite covers the other strategies
    if target_name not in _MODELS:
        _MODELS[target_name] = INSTALLED.target(target_name).tiny_model()
    result = check_pair(INSTALLED, strategy_name, target_name, model=_MODELS[target_name])
    assert result.refusal is None, result.refusal  # a content-blind pruner fits every layout


def test_same_results_installed_and_as_a_local_file() -> None:
    as_file = Registry(entry_points=False, plugins=[load_plugin_file(tokencompress_uniform.__file__)])
    assert as_file.strategies["uniform_grid"].package == "file:__init__.py"
    from tokencompress.models.loading import build_default_model

    model = build_default_model().model  # LLaVA-OV geometry: 196 tokens per frame, as the file expects
    frames = moving_frames(2)
    kept = []
    for registry in (INSTALLED, as_file):
        with Pipeline.from_yaml(PIPELINE, registry).apply(model) as bound:
            stream = bound.stream()
            stream.add_frames(frames)
            kept.append(stream.llm.visual_tokens)
    assert kept[0] == kept[1] == 120
