"""The ``tokencompress`` argument parser: every command, every option with help and its default."""

from __future__ import annotations

import argparse

from .options import (
    HelpFormatter,
    add_compile,
    add_decoder_kernels,
    add_model,
    add_plugin,
    add_prefill_chunks,
    add_progress,
    add_sampling,
)

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="tokencompress",
        description="Visual token compression for streaming video LLMs",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=text, description=text, formatter_class=HelpFormatter
        )

    run = command("run", "stream a video through a pipeline and report per-chunk figures")
    run.add_argument("pipeline", help="pipeline YAML file")
    add_sampling(run, None, "sampling fps (default: the pipeline's stream.fps)")
    add_model(run)
    add_plugin(run)
    run.add_argument("--ask", help="question to answer from the KV cache after the video")
    run.add_argument("--max-new-tokens", type=int, default=32, help="answer length in tokens for --ask")
    run.add_argument(
        "--json", metavar="PATH", help="also write one JSON file: per-chunk stats, summary, status, answer"
    )
    add_prefill_chunks(run)
    add_decoder_kernels(run)
    add_compile(run)
    add_progress(run)

    val = command("validate", "check a pipeline file (and, unless --no-model, against a model)")
    val.add_argument("pipeline", help="pipeline YAML file")
    add_model(val)
    add_plugin(val)
    val.add_argument("--no-model", action="store_true", help="check the file only, load no model")

    schema = command("schema", "print the pipeline JSON Schema (for editors)")
    add_plugin(schema)
    plugins = command("plugins", "list installed strategies and targets with their package and version")
    add_plugin(plugins)
    plugins.add_argument("--json", action="store_true", help="print the listing as JSON instead of a table")

    bench = command("bench", "measure a pipeline against the uncompressed baseline in one run")
    bench.add_argument("pipeline", help="pipeline YAML file")
    add_sampling(bench, 16, "sampling fps (default: the pipeline's stream.fps)")
    bench.add_argument("--frames", type=int, dest="max_frames", help=argparse.SUPPRESS)  # old name
    add_model(bench)
    add_plugin(bench)
    bench.add_argument("--repeats", type=int, default=3, help="measured repeats per variant (median)")
    bench.add_argument("--warmup", type=int, default=1, help="interleaved warm-up runs before the repeats")
    add_prefill_chunks(bench, "; the baseline runs with the same setting")
    add_decoder_kernels(bench, "; the baseline runs with the same setting")
    bench.add_argument(
        "--sweep",
        metavar="PARAM=v1,v2,...",
        help="run once per value of a strategy parameter and write a speed curve (<pipeline>_sweep.json/.png)",
    )
    bench.add_argument(
        "--out",
        metavar="DIR",
        default="bench_out",
        help="directory to write <pipeline>.json (figures, status) and <pipeline>.png (chart) into",
    )
    add_compile(bench)
    add_progress(bench)

    from .eval_command import add_parser as add_eval_parser  # argparse only: no heavy imports here

    add_eval_parser(sub, parents=[common])
    return p
