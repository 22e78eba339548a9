"""Benchmark name → loader, and the checks that need every video before any model call."""

from __future__ import annotations

from pathlib import Path

from ..api.errors import TokenCompressError
from ..media.video import probe
from . import offline, ovo_bench, streamingbench
from .loading import LoadOptions
from .records import Loaded
from .sampling import FrameRule

__all__ = ["load_benchmark", "preflight"]


def load_benchmark(bench: str, data: Path, opts: LoadOptions) -> Loaded:
    if not data.exists():
        raise TokenCompressError(f"--data {data}: no such directory")
    if bench == "ovo-bench":
        return ovo_bench.load(data, opts)
    if bench == "streamingbench":
        return streamingbench.load(data, opts)
    return offline.load(bench, data, opts)


def preflight(loaded: Loaded, rule: FrameRule) -> None:
    """Refuse ``--fps`` above a source's rate under ``rekv_stride`` (upstream would crash)."""
    if rule.name != "rekv_stride":
        return
    for video in sorted({q.video for q in loaded.queries}):
        rule.stride(probe(video).fps, video)
