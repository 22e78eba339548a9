"""Engine start: read the settings, check the pipeline against the model, carry it to every process.

:func:`configure` runs where vLLM builds its configuration (the process that starts the engine),
before any worker exists, so a refusal is one line there and never a traceback from a worker.
It validates the pipeline, builds its :class:`~.plan.ServingPlan` for the model's geometry (every
refusal of the plan), and stores the validated pipeline on the Hugging Face config, which vLLM
hands to its engine and worker processes; :func:`carried_plan` rebuilds the plan there.
This module imports no vLLM (it reads the config objects by attribute).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokencompress import CompatibilityError

from .plan import Geometry, ServingPlan
from .settings import CONFIG_ATTR, KEY, pipeline_of, read_settings, to_carried

__all__ = ["HOSTED", "ServedModel", "ServedProcessor", "configure", "carried_plan", "geometry_of"]

HOSTED: dict[str, tuple[str, str]] = {
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", "tokencompress_vllm.qwen:TokenCompressQwen2_5_VL"),
    "Qwen3VLForConditionalGeneration": ("qwen3_vl", "tokencompress_vllm.qwen3:TokenCompressQwen3_VL"),
}
"""vLLM architecture → (tokencompress target, the class registered under that name)."""


def geometry_of(hf_config: Any, architecture: str) -> Geometry:
    vision = hf_config.vision_config
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return Geometry(
        target=HOSTED[architecture][0],
        merge=int(vision.spatial_merge_size),
        temporal_patch=int(vision.temporal_patch_size),
        llm_dim=int(text.hidden_size),
    )


def configure(vllm_config: Any) -> None:
    """Check ``additional_config.tokencompress`` against the model and carry it (no-op without it)."""
    found = read_settings(getattr(vllm_config, "additional_config", None))
    model_config = getattr(vllm_config, "model_config", None)
    if found is None or model_config is None:
        return
    hf_config = model_config.hf_config
    if getattr(hf_config, CONFIG_ATTR, None) is not None:
        return  # already configured (vLLM may run its config hooks more than once)
    settings, pipeline = found
    architecture = model_config.architecture
    if architecture not in HOSTED:
        raise CompatibilityError(
            f"additional_config.{KEY}: model architecture '{architecture}' is not one tokencompress-vllm "
            f"can prune; it hosts {', '.join(HOSTED)} (serve without additional_config.{KEY}, or run "
            "this model with `tokencompress run`)"
        )
    mm = getattr(model_config, "multimodal_config", None)
    if mm is not None and (getattr(mm, "video_pruning_rate", None) or 0) > 0:
        raise CompatibilityError(
            f"additional_config.{KEY} and video_pruning_rate = {mm.video_pruning_rate} both prune the video "
            "tokens; drop --video-pruning-rate (the pipeline's evs strategy is the same method)"
        )
    ServingPlan(pipeline, geometry_of(hf_config, architecture))  # every refusal, here
    setattr(hf_config, CONFIG_ATTR, {**to_carried(settings, pipeline), "architecture": architecture})


def carried_plan(hf_config: Any) -> ServingPlan | None:
    """The plan :func:`configure` carried on ``hf_config`` (None: no pipeline, or one without
    token strategies, which leaves vLLM's own behaviour untouched)."""
    carried = getattr(hf_config, CONFIG_ATTR, None)
    if not carried:
        return None
    plan = ServingPlan(pipeline_of(carried), geometry_of(hf_config, carried["architecture"]))
    return plan if plan.active else None


class ServedProcessor:
    """Mixin of a hosted multimodal processor: the plan carried on its model's config, built once."""

    def _plan(self) -> ServingPlan | None:
        if not hasattr(self, "_tokencompress_plan"):
            self._tokencompress_plan = carried_plan(self.info.get_hf_config())  # type: ignore[attr-defined]
        return self._tokencompress_plan


class ServedModel:
    """Mixin of a hosted model class: call :meth:`_carry_plan` after vLLM's ``__init__``."""

    def _carry_plan(self) -> None:
        """Read the carried plan (and the test's record file) and switch vLLM's pruning path on."""
        self.tokencompress_plan = carried_plan(self.config)  # type: ignore[attr-defined]
        carried = getattr(self.config, CONFIG_ATTR, None) or {}  # type: ignore[attr-defined]
        self.tokencompress_record = carried.get("record")
        if self.tokencompress_plan is not None:
            # vLLM's flag for "embeddings carry their positions" (set from video_pruning_rate otherwise)
            self.is_multimodal_pruning_enabled = True
            self.tokencompress_pruning = True  # read by the runner fix in .hooks

    def _record(self, grid: list[int], index: Any) -> None:
        """Append a video's kept token indices to the record file (the same-tokens tests read it)."""
        if self.tokencompress_record:
            line = json.dumps({"grid": [int(v) for v in grid], "kept": index.tolist()})
            with Path(self.tokencompress_record).open("a") as fh:
                fh.write(line + "\n")
