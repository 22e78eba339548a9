"""Pipelines: a validated recipe, bound to a model through its target, applied reversibly.

``Pipeline`` is the recipe (strategies per stage, stream shape). ``pipeline.apply(model)`` binds
it to a model: it resolves the target, refuses combinations the target cannot run (naming the
strategy, the target and the unmet need), installs the block hooks and yields a
:class:`BoundPipeline` that opens streams. On exit the model is exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from torch import nn

from ..api.errors import ConfigError
from ..patching.compiling import CompileOptions, compile_options
from ..plugins.registry import Registry
from .bound import BoundPipeline
from .config import PipelineConfig, load_config, parse_config
from .grammar import format_validation_error, to_json
from .placement import place_strategies

__all__ = ["Pipeline", "BoundPipeline"]


class Pipeline:
    """A pipeline recipe; cheap to build, holds no model and no stream state."""

    def __init__(self, config: PipelineConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else Registry()

    @classmethod
    def from_yaml(cls, source: str | Path, registry: Registry | None = None) -> Pipeline:
        registry = registry if registry is not None else Registry()
        return cls(load_config(source, registry), registry)

    @classmethod
    def from_dict(cls, data: dict[str, Any], registry: Registry | None = None) -> Pipeline:
        registry = registry if registry is not None else Registry()
        return cls(parse_config(data, registry), registry)

    @property
    def name(self) -> str:
        return self.config.name

    def bind(self, model: nn.Module, compile: CompileOptions | bool | str | None = None) -> BoundPipeline:
        """Resolve the target for ``model`` and check every strategy against it (no patching yet).

        ``compile`` (opt-in; default eager): ``True``, a backend name or :class:`CompileOptions`
        runs the encoder layers and the strategies' kernels through ``torch.compile`` (see
        :mod:`tokencompress.patching.compiling`); results agree with eager to float32 rounding."""
        target_cls = self.registry.resolve_target(model, self.config.target)
        try:
            options = target_cls.Options.model_validate_json(
                to_json(self.config.target_options, "target_options"), strict=True
            )
        except ValidationError as err:
            raise ConfigError(
                format_validation_error("target_options", err, list(target_cls.Options.model_fields))
            ) from None
        target = target_cls(model, options)
        target.configure_stream(self.config.stream)
        placement = place_strategies(self.config, target)
        return BoundPipeline(self.config, self.registry, target, placement, compile_options(compile))

    @contextmanager
    def apply(
        self, model: nn.Module, compile: CompileOptions | bool | str | None = None
    ) -> Iterator[BoundPipeline]:
        """Install the pipeline on ``model`` for the ``with`` block; restores every forward on exit
        (``compile`` as in :meth:`bind`)."""
        bound = self.bind(model, compile)
        with bound.patched():
            yield bound
