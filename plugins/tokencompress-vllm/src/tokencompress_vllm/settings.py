"""The plugin's engine settings: ``additional_config={"tokencompress": {...}}`` (``--additional-config``).

Keys of the ``tokencompress`` object:

* ``pipeline`` (required): a pipeline YAML file, the same file ``tokencompress run`` takes. It is
  read once, in the process that builds vLLM's configuration; the validated pipeline travels to
  vLLM's other processes inside the model's configuration, so workers never read the file.
* ``record`` (optional): a file to which every worker appends one JSON line per video it prunes
  (``{"grid": [t, h, w], "kept": [...]}``, indices into the video's unpruned tokens), for tests
  and audits.

Everything here imports no vLLM.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokencompress import ConfigError, Pipeline, PipelineConfig, Registry
from tokencompress.pipeline.config import parse_config
from tokencompress.pipeline.grammar import format_validation_error

__all__ = ["KEY", "Settings", "read_settings", "pipeline_of"]

KEY = "tokencompress"
"""The key of ``additional_config`` this plugin reads."""
CONFIG_ATTR = "tokencompress_serving"
"""Attribute of the Hugging Face config that carries the validated settings to every process."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str = Field(description="pipeline YAML file (the same one `tokencompress run` takes)")
    record: str | None = Field(None, description="append one JSON line per pruned video (kept indices)")


def read_settings(additional_config: Any) -> tuple[Settings, PipelineConfig] | None:
    """``None`` when ``additional_config`` has no ``tokencompress`` key; else the settings and the
    pipeline they name, or a one-line :class:`ConfigError` naming the field and the fix."""
    if not isinstance(additional_config, dict) or KEY not in additional_config:
        return None
    raw = additional_config[KEY]
    if isinstance(raw, str):  # the short form: just the pipeline file
        raw = {"pipeline": raw}
    if not isinstance(raw, dict):
        raise ConfigError(
            f'additional_config.{KEY}: expected an object like {{"pipeline": "stc_pruner.yaml"}}, '
            f"got {type(raw).__name__}"
        )
    for key in raw:
        if key not in Settings.model_fields:
            near = difflib.get_close_matches(str(key), list(Settings.model_fields), n=1)
            hint = (
                f" (did you mean '{near[0]}'?)" if near else f"; allowed: {', '.join(Settings.model_fields)}"
            )
            raise ConfigError(f"additional_config.{KEY}: unknown key '{key}'{hint}")
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(
            format_validation_error(f"additional_config.{KEY}", err, list(Settings.model_fields))
        ) from None
    return settings, Pipeline.from_yaml(settings.pipeline).config


def to_carried(settings: Settings, config: PipelineConfig) -> dict[str, Any]:
    """What travels in the model config: plain JSON (the pipeline as a validated mapping)."""
    return {"pipeline": config.to_dict(), "record": settings.record, "source": settings.pipeline}


def pipeline_of(carried: dict[str, Any], registry: Registry | None = None) -> PipelineConfig:
    """The pipeline of :func:`to_carried`'s mapping, validated again in this process."""
    return parse_config(
        carried["pipeline"], registry if registry is not None else Registry(), carried["source"]
    )
