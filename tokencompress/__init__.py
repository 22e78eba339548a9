"""tokencompress: plug-and-play visual token compression for streaming video LLMs.

Quick use::

    from tokencompress import Pipeline, load_model
    loaded = load_model(None)                      # built-in random-weight LLaVA-OV
    pipeline = Pipeline.from_yaml("pipelines/stc.yaml")
    with pipeline.apply(loaded.model) as bound:
        stream = bound.stream(tokenizer=loaded.tokenizer)
        for stats in stream.add_video("clip.mp4"):
            print(stats)
        print(stream.ask("What happens?").text)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Answer": ".stream.stream",
    "BlockAdapter": ".api.block_adapter",
    "BlockCall": ".api.types",
    "BlockStrategy": ".api.strategy",
    "BoundPipeline": ".pipeline.pipeline",
    "BudgetError": ".api.errors",
    "ChatFormat": ".api.types",
    "ChunkInfo": ".api.types",
    "ChunkStats": ".stream.stream",
    "CompatibilityError": ".api.errors",
    "ConfigError": ".api.errors",
    "LLMState": ".api.target",
    "LoadedModel": ".models.loading",
    "Capability": ".api.types",
    "PerFrameParams": ".api.scoring_pruner",
    "Pipeline": ".pipeline.pipeline",
    "PipelineConfig": ".pipeline.config",
    "Plan": ".api.scoring_pruner",
    "PluginError": ".api.errors",
    "Registry": ".plugins.registry",
    "ScoringPruner": ".api.scoring_pruner",
    "Stage": ".api.types",
    "StageEvent": ".plugins",
    "StageInfo": ".api.types",
    "Strategy": ".api.strategy",
    "StrategyParams": ".api.strategy",
    "Stream": ".stream.stream",
    "StreamConfig": ".api.types",
    "Target": ".api.target",
    "TargetOptions": ".api.target",
    "TokenCompressError": ".api.errors",
    "TokenStrategy": ".api.strategy",
    "VideoError": ".api.errors",
    "VisualTokens": ".api.tokens",
    "hookimpl": ".plugins",
    "load_model": ".models.loading",
}
"""Public name → module. Resolved on first use (PEP 562), so ``import tokencompress`` (and the
command line's startup) does not import torch: a Ctrl-C during a command's first second lands
in code that handles it, and ``--help`` / ``--version`` answer at once."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokencompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # static tools see the real names
    from .api.block_adapter import BlockAdapter
    from .api.errors import (
        BudgetError,
        CompatibilityError,
        ConfigError,
        PluginError,
        TokenCompressError,
        VideoError,
    )
    from .api.scoring_pruner import PerFrameParams, Plan, ScoringPruner
    from .api.strategy import BlockStrategy, Strategy, StrategyParams, TokenStrategy
    from .api.target import LLMState, Target, TargetOptions
    from .api.tokens import VisualTokens
    from .api.types import BlockCall, Capability, ChatFormat, ChunkInfo, Stage, StageInfo, StreamConfig
    from .models.loading import LoadedModel, load_model
    from .pipeline.config import PipelineConfig
    from .pipeline.pipeline import BoundPipeline, Pipeline
    from .plugins import StageEvent, hookimpl
    from .plugins.registry import Registry
    from .stream.stream import Answer, ChunkStats, Stream

__all__ = [
    "Answer",
    "BlockAdapter",
    "BlockCall",
    "BlockStrategy",
    "BoundPipeline",
    "BudgetError",
    "ChatFormat",
    "ChunkInfo",
    "ChunkStats",
    "CompatibilityError",
    "ConfigError",
    "LLMState",
    "LoadedModel",
    "Capability",
    "PerFrameParams",
    "Pipeline",
    "PipelineConfig",
    "Plan",
    "PluginError",
    "Registry",
    "ScoringPruner",
    "Stage",
    "StageEvent",
    "StageInfo",
    "Strategy",
    "StrategyParams",
    "StreamConfig",
    "Stream",
    "Target",
    "TargetOptions",
    "TokenCompressError",
    "TokenStrategy",
    "VideoError",
    "VisualTokens",
    "hookimpl",
    "load_model",
]
