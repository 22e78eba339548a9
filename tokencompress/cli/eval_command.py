"""``tokencompress eval``: accuracy retention of pipelines against the uncompressed baseline.

Everything a user can get wrong (layout, a missing video, an impossible ``--fps``, a pipeline
the model cannot run) is checked before the model loads or any query runs, and reported on one
line. Launch with ``torchrun --nproc_per_node N -m tokencompress eval ...`` (or ``accelerate
launch -m tokencompress eval ...``) to shard whole videos over ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .terminal import printable

__all__ = ["BENCHMARKS", "add_parser", "run"]

BENCHMARKS = ("ovo-bench", "streamingbench", "videomme", "mlvu", "egoschema")
ONLINE = ("ovo-bench", "streamingbench")


def add_parser(sub: Any, parents: Any = ()) -> argparse.ArgumentParser:
    from .options import HelpFormatter, add_model, add_plugin, add_progress

    text = "accuracy retention of pipelines vs the uncompressed baseline on a benchmark"
    p = sub.add_parser(
        "eval", help=text, description=text, parents=list(parents), formatter_class=HelpFormatter
    )
    p.add_argument(
        "pipelines", nargs="+", metavar="PIPELINE.yaml", help="pipeline YAML files (the baseline always runs)"
    )
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="benchmark to score")
    p.add_argument(
        "--data",
        required=True,
        help="benchmark root in its own layout (offline sets: or a ReKV-format .json)",
    )
    add_model(p)
    add_plugin(p)
    p.add_argument(
        "--protocol",
        default="reference",
        choices=("reference", "incremental"),
        help="reference: a fresh session per query over its window (the authors' scripts); incremental: one "
        "session per video, frames appended between queries",
    )
    p.add_argument("--fps", type=float, help="sampling fps (default: 1 for OVO/StreamingBench, 0.5 offline)")
    p.add_argument(
        "--frame-rule",
        default="rekv_stride",
        choices=("rekv_stride", "uniform_k", "time_slots"),
        help="which frames of a window are sampled: rekv_stride (every n-th), uniform_k (--num-frames spread), "
        "time_slots (first frame per 1/fps slot)",
    )
    p.add_argument("--num-frames", type=int, default=32, help="frames per query under uniform_k")
    p.add_argument("--scoring", help="scorer mode (official, strict, lmms, stc; per benchmark)")
    p.add_argument("--prompts", help="YAML file replacing prompt templates key by key")
    p.add_argument(
        "--prompt-wrap", default="chat", choices=("chat", "raw"), help="raw: no assistant header (STC/ReKV)"
    )
    p.add_argument("--context", type=float, default=-1.0, help="StreamingBench context seconds (-1: from 0)")
    p.add_argument("--max-new-tokens", type=int, help="answer length (default: 128 online, 16 offline)")
    p.add_argument("--limit", type=int, help="first N annotation records (after --tasks)")
    p.add_argument("--tasks", nargs="+", help="task codes to keep (e.g. EPM STU REC, OP CT, plotQA)")
    p.add_argument(
        "--strict", action="store_true", help="fail on a bad annotation record instead of skipping it"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda:LOCAL_RANK when available)")
    p.add_argument(
        "--out",
        metavar="DIR",
        default="eval_out",
        help="directory to write results.json, results.md, predictions.jsonl (resumed from) and retention.png",
    )
    add_progress(p)
    return p


def run(args: argparse.Namespace, loaded_model: Any = None) -> int:
    """The command; ``loaded_model`` (a :class:`~tokencompress.models.loading.LoadedModel`) skips loading."""
    from ..eval.runner import evaluate
    from ..eval.shard import Shard
    from .options import show_progress

    data, rule, scoring, max_new, prompts, skipped = _inputs(args)
    registry, pipelines = _pipelines(args)
    shard = Shard.from_env(args.device)
    try:
        say = print if shard.rank == 0 else (lambda *a, **k: None)
        say(
            printable(
                f"benchmark: {args.benchmark} ({data.source}), {len(data.queries)} queries; skipped records: {skipped}"
            )
        )
        for w in data.warnings[:5]:
            say(f"warning: {printable(w)}")
        loaded_model, device = _model(args, loaded_model, shard, say)
        engines = _engines(args, registry, pipelines, loaded_model, max_new)
        settings = _settings(args, rule, scoring, max_new, prompts, loaded_model, device)
        say(
            printable(
                f"protocol {args.protocol}, frames {rule.as_dict()}, scoring {scoring}; variants: {', '.join(e.name for e in engines)}"
            )
        )
        results = evaluate(data, engines, settings, Path(args.out), shard, progress=show_progress(args))
    finally:
        shard.close()
    if results is not None:
        _print_results(args, results)
    return 0


def _inputs(args: argparse.Namespace) -> tuple[Any, Any, str, int, Any, str]:
    """Everything checked before the model loads: frame rule, answer length, ``--out``, prompts, the
    benchmark's records (and what was skipped) and the scoring mode."""
    from ..api.errors import TokenCompressError
    from ..eval.guards import skip_summary
    from ..eval.loaders import load_benchmark, preflight
    from ..eval.loading import LoadOptions
    from ..eval.prompts import load_prompts
    from ..eval.sampling import FrameRule
    from ..eval.scoring import MODES, check_mode

    fps = args.fps if args.fps is not None else (1.0 if args.benchmark in ONLINE else 0.5)
    rule = FrameRule(args.frame_rule, fps, args.num_frames)
    if args.protocol == "incremental" and rule.name == "uniform_k":
        raise TokenCompressError(
            "--frame-rule uniform_k spreads k frames over each window; --protocol incremental needs rekv_stride or time_slots"
        )
    max_new = args.max_new_tokens or (128 if args.benchmark in ONLINE else 16)
    if max_new < 1:
        raise TokenCompressError(f"--max-new-tokens must be >= 1, got {max_new}")
    _check_out(args.out)
    prompts = load_prompts(args.prompts)
    opts = LoadOptions(
        tasks=args.tasks, limit=args.limit, strict=args.strict, context=args.context, prompts=prompts
    )
    data = load_benchmark(args.benchmark, Path(args.data), opts)
    scoring = args.scoring or (
        data.scoring_default if data.scoring_default in MODES[args.benchmark] else MODES[args.benchmark][0]
    )
    check_mode(args.benchmark, scoring)
    skipped = skip_summary(data.skipped, data.skipped_ids)
    if not data.queries:
        raise TokenCompressError(
            f"--data {args.data}: no {args.benchmark} queries left (skipped: {skipped}; check --tasks/--limit)"
        )
    preflight(data, rule)
    return data, rule, scoring, max_new, prompts, skipped


def _pipelines(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The registry and the pipelines to compare (the baseline is added by :func:`_engines`), each
    name once."""
    from ..api.errors import TokenCompressError
    from ..pipeline.pipeline import Pipeline
    from .options import registry_for

    registry = registry_for(args)
    pipelines = _drop_baselines([Pipeline.from_yaml(p, registry) for p in args.pipelines])
    names = [p.name for p in pipelines]
    if len(set(names)) != len(names):
        raise TokenCompressError(
            f"two pipelines are named '{next(n for n in names if names.count(n) > 1)}'; give each YAML its own name"
        )
    return registry, pipelines


def _model(args: argparse.Namespace, loaded_model: Any, shard: Any, say: Any) -> tuple[Any, str]:
    """The model (loaded unless given), on this rank's device, announced."""
    if loaded_model is None:
        from ..models.loading import load_model

        loaded_model = load_model(args.model, tokenizer=getattr(args, "tokenizer", None))
    device = _device(args.device, shard)
    if device != "cpu":
        loaded_model.model.to(device)
    say(f"model: {printable(loaded_model.description)}")
    if loaded_model.random_weights:
        say("note: random weights: answers are noise, so are scores and retention (speed figures still hold)")
    return loaded_model, device


def _engines(
    args: argparse.Namespace, registry: Any, pipelines: list[Any], loaded_model: Any, max_new: int
) -> list[Any]:
    """One engine per variant: the uncompressed baseline first, then each pipeline (a pipeline the
    model cannot run fails here, before any query)."""
    from ..eval.engine import StreamEngine
    from ..pipeline.config import PipelineConfig
    from ..pipeline.pipeline import Pipeline

    model = loaded_model.model
    first = pipelines[0].config if pipelines else PipelineConfig()
    base_cfg = dataclasses.replace(first, name="baseline", stages={})
    bound = [Pipeline(base_cfg, registry).bind(model), *(p.bind(model) for p in pipelines)]
    return [StreamEngine(b, loaded_model.tokenizer, max_new, args.prompt_wrap) for b in bound]


def _settings(
    args: argparse.Namespace,
    rule: Any,
    scoring: str,
    max_new: int,
    prompts: Any,
    loaded_model: Any,
    device: str,
) -> Any:
    """What the results record about how they were made."""
    from ..eval.runner import Settings

    return Settings(
        benchmark=args.benchmark,
        protocol=args.protocol,
        rule=rule,
        scoring=scoring,
        max_new_tokens=max_new,
        wrap=args.prompt_wrap,
        model=loaded_model.description,
        random_weights=loaded_model.random_weights,
        prompts=f"{prompts.source} sha256:{prompts.digest}",
        context=args.context,
        device=device,
    )


def _print_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from ..eval.report import format_table

    print(printable(format_table(results), keep="\n"), end="")
    errors = sum(v["speed"]["errors"] for v in results["variants"])
    if errors:
        print(f"note: {errors} inference error(s) scored 0 (see 'error' in predictions.jsonl)")
    print(
        f"wrote {Path(args.out) / 'results.json'}, results.md, predictions.jsonl"
        + (", retention.png" if results.get("plot") else "")
    )


def _check_out(out: str) -> None:
    """``--out`` is (or can become) a folder where every output can be written: checked before loading."""
    from ..files.outputs import check_output_dir

    names = ["results.json", "results.md", "predictions.jsonl", "retention.png", "preds.rank0.jsonl"]
    check_output_dir(out, "--out", names)


def _drop_baselines(pipelines: list[Any]) -> list[Any]:
    from ..api.errors import TokenCompressError

    out = []
    for p in pipelines:
        if p.name == "baseline":
            if any(p.config.stages.values()):
                raise TokenCompressError(
                    "pipeline name 'baseline' is reserved for the uncompressed run; rename it"
                )
            print("note: the uncompressed baseline always runs; baseline.yaml skipped")
            continue
        out.append(p)
    return out


def _device(choice: str, shard: Any) -> str:
    """``auto``: this rank's GPU (ranks beyond the GPU count share them, round robin), else CPU."""
    import os

    import torch

    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
