"""The pipelines the tests share, defined once: STC's two stages as most tiny-model tests run them,
the same pair as YAML for the command line, and a builder with the tests' defaults."""

from __future__ import annotations

from typing import Any

from tokencompress import Pipeline

STC: dict[str, list[dict[str, Any]]] = {
    "pre_vit_block": [{"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2}],
    "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 6}],
}
"""STC's ``stages``: the cacher recomputes a quarter of the tokens every 2nd frame, the pruner keeps
6 of the tiny LLaVA-OV's 16 pooled tokens per frame (4x4 grid)."""

TINY_STC = (
    "stages:\n  pre_vit_block:\n    - {strategy: stc_cacher}\n"
    "  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 8}\n"
)
"""An STC pipeline file that fits the tiny checkpoint (16 tokens a frame; the ready-made
pipelines/stc.yaml keeps more tokens than it has)."""


def pipeline(
    stages: dict | None = None, fpc: int = 1, *, stream: dict | None = None, **extra: Any
) -> Pipeline:
    """A pipeline named ``t`` with ``stages`` (none: the plain model), ``fpc`` frames per chunk and
    any further ``stream`` options (``fps``, ``prefill_chunks``, or ``frames_per_chunk`` itself);
    ``extra`` gives the other top-level keys (``target``, ``target_options``)."""
    return Pipeline.from_dict(
        {"name": "t", "stream": {"frames_per_chunk": fpc, **(stream or {})}, "stages": stages or {}, **extra}
    )
