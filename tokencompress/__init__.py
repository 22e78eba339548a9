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
    # the vocabulary of stages and chunks
    "BlockCall": ".api.types",
    "Capability": ".api.types",
    "ChatFormat": ".api.types",
    "ChunkInfo": ".api.types",
    "LayerProbe": ".api.types",
    "Need": ".api.types",
    "Stage": ".api.types",
    "StageInfo": ".api.types",
    "StreamConfig": ".api.types",
    "VisualTokens": ".api.tokens",
    # what plugin authors subclass
    "BlockAdapter": ".api.block_adapter",
    "BlockStrategy": ".api.strategy",
    "Boundary": ".api.in_decoder",
    "DecoderLayout": ".api.kv_cache",
    "DecoderStack": ".api.in_decoder",
    "InDecoderParams": ".api.in_decoder",
    "InDecoderState": ".api.in_decoder",
    "InDecoderStrategy": ".api.in_decoder",
    "KVBuild": ".api.kv_cache_strategy",
    "KVCacheStrategy": ".api.kv_cache_strategy",
    "KVMemory": ".api.kv_cache_strategy",
    "LLMState": ".api.target",
    "PerFrameParams": ".api.scoring_pruner",
    "Plan": ".api.scoring_pruner",
    "ScoringPruner": ".api.scoring_pruner",
    "Strategy": ".api.strategy",
    "StrategyParams": ".api.strategy",
    "Target": ".api.target",
    "TargetOptions": ".api.target",
    "TokenStrategy": ".api.strategy",
    # errors
    "BudgetError": ".api.errors",
    "CompatibilityError": ".api.errors",
    "ConfigError": ".api.errors",
    "PluginError": ".api.errors",
    "StreamBusyError": ".api.errors",
    "TokenCompressError": ".api.errors",
    "VideoError": ".api.errors",
    # plugins
    "Registrar": ".plugins.registrar",
    "Registry": ".plugins.registry",
    "StageEvent": ".plugins.events",
    "hookimpl": ".plugins.markers",
    "load_plugin_file": ".plugins.local_files",
    # running
    "Answer": ".stream.results",
    "BoundPipeline": ".pipeline.bound",
    "ChunkStats": ".stream.results",
    "LoadedModel": ".models.loading",
    "Pipeline": ".pipeline.pipeline",
    "PipelineConfig": ".pipeline.config",
    "Stream": ".stream.stream",
    "load_model": ".models.loading",
}
"""The public API: name → module, the one list (``__all__`` is its keys; a test checks that the
static imports below name the same). Resolved on first use (PEP 562), so ``import tokencompress``
(and the command line's startup) does not import torch: a Ctrl-C during a command's first second
lands in code that handles it, and ``--help`` / ``--version`` answer at once."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokencompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # static tools see the real names (tests/architecture checks them against _EXPORTS)
    from .api.block_adapter import BlockAdapter
    from .api.errors import (
        BudgetError,
        CompatibilityError,
        ConfigError,
        PluginError,
        StreamBusyError,
        TokenCompressError,
        VideoError,
    )
    from .api.in_decoder import Boundary, DecoderStack, InDecoderParams, InDecoderState, InDecoderStrategy
    from .api.kv_cache import DecoderLayout
    from .api.kv_cache_strategy import KVBuild, KVCacheStrategy, KVMemory
    from .api.scoring_pruner import PerFrameParams, Plan, ScoringPruner
    from .api.strategy import BlockStrategy, Strategy, StrategyParams, TokenStrategy
    from .api.target import LLMState, Target, TargetOptions
    from .api.tokens import VisualTokens
    from .api.types import (
        BlockCall,
        Capability,
        ChatFormat,
        ChunkInfo,
        LayerProbe,
        Need,
        Stage,
        StageInfo,
        StreamConfig,
    )
    from .models.loading import LoadedModel, load_model
    from .pipeline.bound import BoundPipeline
    from .pipeline.config import PipelineConfig
    from .pipeline.pipeline import Pipeline
    from .plugins.events import StageEvent
    from .plugins.local_files import load_plugin_file
    from .plugins.markers import hookimpl
    from .plugins.registrar import Registrar
    from .plugins.registry import Registry
    from .stream.results import Answer, ChunkStats
    from .stream.stream import Stream
