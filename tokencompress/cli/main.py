"""``tokencompress`` command line: run, validate, schema, plugins.

User errors (bad YAML, unknown strategy, impossible budget, broken video) print one line on
stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ..api.errors import TokenCompressError
from .args import check_args
from .options import registry_for, show_progress
from .terminal import printable

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .parser import build_parser

    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate" or not show_progress(args):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # this process is ours: keep stderr to our own lines
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line  # plugin warnings as one line each, like errors
        return _dispatch(args)


def _warning_line(message: Any, category: type, *rest: Any, **kw: Any) -> None:
    print(f"warning: {printable(message)}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        check_args(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "run":
            from .run_command import run

            return run(args)
        if args.command == "bench":
            from .bench_command import bench

            return bench(args)
        return {"validate": _validate, "schema": _schema, "plugins": _plugins}[args.command](args)
    except TokenCompressError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------ commands
def _plugins(args: argparse.Namespace) -> int:
    from .plugin_table import format_plugins, plugin_listing

    listing = plugin_listing(registry_for(args))
    text = json.dumps(listing, indent=2) if args.json else format_plugins(listing)
    print("\n".join(printable(line) for line in text.splitlines()))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from ..pipeline.config import json_schema

    print(json.dumps(json_schema(registry_for(args)), indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..models.loading import load_model
    from ..pipeline.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(args.pipeline, registry_for(args))
    where = "file"
    if not args.no_model:
        loaded = load_model(args.model, tokenizer=args.tokenizer, with_tokenizer=False)
        bound = pipeline.bind(loaded.model)
        where = f"model {printable(args.model or 'builtin')} (target {printable(bound.target.name)})"
        for note in bound.notes:
            print(f"note: {printable(note)}")
    steps = ", ".join(
        f"{st.value}: {printable([s.name for s in ss])}" for st, ss in pipeline.config.stages.items() if ss
    )
    print(f"ok: {printable(args.pipeline)} is valid for {where}; {steps or 'no strategies'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval_command import run

    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
