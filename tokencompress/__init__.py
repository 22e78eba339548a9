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

from .block_adapter import BlockAdapter
from .errors import BudgetError, CompatibilityError, ConfigError, PluginError, TokenCompressError, VideoError
from .hooks import StageEvent, hookimpl
from .models import LoadedModel, load_model
from .pipeline import BoundPipeline, Pipeline
from .pipeline_config import PipelineConfig
from .registry import Registry
from .scoring_pruner import PerFrameParams, Plan, ScoringPruner
from .session import Answer, ChunkStats, Stream
from .strategy import BlockStrategy, Strategy, StrategyParams, TokenStrategy
from .target import LLMState, Target, TargetOptions
from .tokens import VisualTokens
from .types import BlockCall, ChatFormat, ChunkInfo, Need, Stage, StageInfo, StreamConfig

__version__ = "0.1.0"

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
]
