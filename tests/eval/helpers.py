"""Running the harness on a synthetic set with scripted engines (no model)."""

from __future__ import annotations

from pathlib import Path

from tokencompress.eval.fakes import ScriptedEngine
from tokencompress.eval.loaders import load_benchmark
from tokencompress.eval.loading import LoadOptions
from tokencompress.eval.runner import Settings, evaluate
from tokencompress.eval.sampling import FrameRule


def run_scripted(
    bench, data, out, script, protocol="reference", fps=1.0, scoring="official", extra=(), **opts
):
    loaded = load_benchmark(bench, Path(data), LoadOptions(**opts))
    engines = [ScriptedEngine(script, "baseline", "b"), *extra]
    settings = Settings(bench, protocol=protocol, rule=FrameRule("rekv_stride", fps), scoring=scoring)
    return evaluate(loaded, engines, settings, Path(out)), engines, loaded
