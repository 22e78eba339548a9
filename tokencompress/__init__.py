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
    "Answer": ".session",
    "BlockAdapter": ".block_adapter",
    "BlockCall": ".types",
    "BlockStrategy": ".strategy",
    "BoundPipeline": ".pipeline",
    "BudgetError": ".errors",
    "ChatFormat": ".types",
    "ChunkInfo": ".types",
    "ChunkStats": ".session",
    "CompatibilityError": ".errors",
    "ConfigError": ".errors",
    "LLMState": ".target",
    "LoadedModel": ".models",
    "Need": ".types",
    "PerFrameParams": ".scoring_pruner",
    "Pipeline": ".pipeline",
    "PipelineConfig": ".pipeline_config",
    "Plan": ".scoring_pruner",
    "PluginError": ".errors",
    "Registry": ".registry",
    "ScoringPruner": ".scoring_pruner",
    "Stage": ".types",
    "StageEvent": ".hooks",
    "StageInfo": ".types",
    "Strategy": ".strategy",
    "StrategyParams": ".strategy",
    "Stream": ".session",
    "StreamConfig": ".types",
    "Target": ".target",
    "TargetOptions": ".target",
    "TokenCompressError": ".errors",
    "TokenStrategy": ".strategy",
    "VideoError": ".errors",
    "VisualTokens": ".tokens",
    "hookimpl": ".hooks",
    "load_model": ".models",
    "load_plugin_file": ".plugin_files",
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
    from .block_adapter import BlockAdapter
    from .errors import (
        BudgetError,
        CompatibilityError,
        ConfigError,
        PluginError,
        TokenCompressError,
        VideoError,
    )
    from .hooks import StageEvent, hookimpl
    from .models import LoadedModel, load_model
    from .pipeline import BoundPipeline, Pipeline
    from .pipeline_config import PipelineConfig
    from .plugin_files import load_plugin_file
    from .registry import Registry
    from .scoring_pruner import PerFrameParams, Plan, ScoringPruner
    from .session import Answer, ChunkStats, Stream
    from .strategy import BlockStrategy, Strategy, StrategyParams, TokenStrategy
    from .target import LLMState, Target, TargetOptions
    from .tokens import VisualTokens
    from .types import BlockCall, ChatFormat, ChunkInfo, Need, Stage, StageInfo, StreamConfig

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
    "Need",
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
    "load_plugin_file",
]
