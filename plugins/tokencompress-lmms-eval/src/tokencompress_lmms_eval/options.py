"""What a run may ask of the model: ``--model_args`` and a task's ``generation_kwargs``, checked.

lmms-eval passes ``--model_args k=v,...`` as constructor keywords (``true``/``false`` and numbers
already converted) plus ``batch_size``, ``max_batch_size`` and ``device`` from its own flags. A
misspelt key must not be dropped silently (the run would measure something else), so unknown
keys are refused with the list of known ones.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["ModelArgs", "decode_settings", "cut_at_stop"]

_NONE = ("", "none", "null")
_BASELINE = _NONE + ("baseline",)
_DTYPES = ("float32", "bfloat16", "float16")


class ModelArgs(BaseModel):
    """The ``--model_args`` of ``--model tokencompress``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pretrained: str | None = Field(
        None,
        description="from_pretrained directory or hub id; none/builtin: the built-in random-weight model",
    )
    pipeline: str | None = Field(
        None, description="pipeline YAML path; none/baseline: no compression (the reference run)"
    )
    fps: float | None = Field(None, gt=0, description="frames sampled per second (default: the pipeline's)")
    max_frames: int | None = Field(None, ge=1, description="at most this many frames per video")
    max_new_tokens: int = Field(16, ge=1, description="used when the task's generation_kwargs name none")
    dtype: str = Field("float32", description="weights dtype for from_pretrained: " + ", ".join(_DTYPES))
    device: str | None = Field(None, description="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if available)")
    stats: str | None = Field(
        None, description="JSONL file: one line of token counts and timings per request"
    )
    batch_size: int = Field(1, description="must be 1: every request is its own stream")
    max_batch_size: int | None = None

    @field_validator("pretrained", "pipeline", "stats", "device", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        if str(v).strip() not in ("1", "auto"):
            raise ValueError(f"got {v!r}; requests are answered one stream at a time, use --batch_size 1")
        return 1

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in _DTYPES:
            raise ValueError(f"got {v!r}; use one of {', '.join(_DTYPES)}")
        return v

    @classmethod
    def parse(cls, kwargs: dict[str, Any]) -> ModelArgs:
        """Validate, or raise ``ValueError`` naming the field and the fix in one line."""
        known = list(cls.model_fields)
        for key in kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(
                    f"--model_args: unknown key '{key}'{hint}; the tokencompress model takes "
                    + ", ".join(k for k in known if k != "max_batch_size")
                )
        try:
            return cls.model_validate(kwargs)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "model_args"
            raise ValueError(f"--model_args {where}: {first['msg']}") from None

    @property
    def model_name(self) -> str | None:
        """What ``tokencompress.load_model`` takes: ``None`` selects the built-in model."""
        return (
            None
            if self.pretrained is None or self.pretrained.lower() in _NONE + ("builtin",)
            else self.pretrained
        )

    @property
    def pipeline_path(self) -> str | None:
        return None if self.pipeline is None or self.pipeline.lower() in _BASELINE else self.pipeline


def decode_settings(
    gen_kwargs: dict[str, Any], default_max_new_tokens: int, task: str
) -> tuple[int, list[str]]:
    """``(max_new_tokens, stop strings)`` for one request.

    The stream decodes greedily; a task that asks for sampling or beams would be scored on
    something it did not ask for, so it is refused with the override that makes it greedy.
    """
    if gen_kwargs.get("do_sample"):
        raise ValueError(
            f"task '{task}': generation_kwargs.do_sample is true but the tokencompress model decodes greedily; "
            "run with --gen_kwargs do_sample=false"
        )
    beams = gen_kwargs.get("num_beams") or 1
    if int(beams) != 1:
        raise ValueError(
            f"task '{task}': generation_kwargs.num_beams={beams} but the tokencompress model decodes greedily; "
            "run with --gen_kwargs num_beams=1"
        )
    max_new = gen_kwargs.get("max_new_tokens") or default_max_new_tokens
    until = gen_kwargs.get("until") or []
    stops = [until] if isinstance(until, str) else [str(s) for s in until]
    return int(max_new), [s for s in stops if s]


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text before the earliest stop string (lmms-eval's ``until``), as HF ``stop_strings`` would."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
