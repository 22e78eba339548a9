"""``--model tokencompress``: lmms-eval requests answered by a tokencompress stream.

Each request is one stream: the task's visuals (video paths, or images as single frames) are
decoded with PyAV, pushed through the pipeline chunk by chunk exactly as ``tokencompress run``
does, and the task's prompt is asked from the KV cache. The pipeline's patches are installed
only while a batch of requests runs (``Pipeline.apply``), so nothing stays patched between
calls or after lmms-eval's ``clean()``.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import INSTALL_HINT, TESTED_LMMS_EVAL

try:
    from lmms_eval.api.instance import GenerationResult, TokenCounts
    from lmms_eval.api.model import lmms
except ImportError as exc:  # pragma: no cover - exercised in an environment without lmms-eval
    raise ImportError(
        f"the tokencompress lmms-eval model needs lmms-eval {TESTED_LMMS_EVAL}.x: {INSTALL_HINT}"
    ) from exc

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from tokencompress import Pipeline, load_model

from .options import ModelArgs, cut_at_stop, decode_settings

__all__ = ["TokencompressLMM"]

_BASELINE = {"name": "baseline", "target": "auto", "stages": {}}


class TokencompressLMM(lmms):
    """An lmms-eval "simple" model: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` requests."""

    is_simple = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.args = ModelArgs.parse(kwargs)
        version = importlib.metadata.version("lmms-eval")
        if not version.startswith(TESTED_LMMS_EVAL + "."):
            logger.warning(
                f"tokencompress model: written for lmms-eval {TESTED_LMMS_EVAL}.x, running on {version}"
            )
        # Ranks as lmms-eval's launchers set them; the evaluator shards requests by these.
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._device = _pick_device(self.args.device)
        path = self.args.pipeline_path
        # the pipeline file first: a typo in it is reported before minutes of model loading
        self.pipeline = Pipeline.from_yaml(path) if path else Pipeline.from_dict(_BASELINE)
        self.loaded = load_model(self.args.model_name, dtype=getattr(torch, self.args.dtype))
        self.loaded.model.to(self._device)
        self.pipeline.bind(self.loaded.model)  # budget and compatibility errors now, not mid-run
        if self.loaded.random_weights:
            logger.warning(f"tokencompress model: {self.loaded.description}")
        logger.info(
            f"tokencompress model: pipeline '{self.pipeline.name}' ({path or 'no compression'}) on {self._device}"
        )

    @property
    def stats_path(self) -> str | None:
        """``stats``, or ``stats`` with ``.rankR`` before the suffix when several ranks run (one writer per file).

        Under several ranks lmms-eval pads the shorter shards with copies of their last request,
        so a rank's file can hold one request twice; lmms-eval drops the copies from its results.
        """
        if not self.args.stats or self.world_size == 1:
            return self.args.stats
        path = Path(self.args.stats)
        return str(path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}"))

    # lmms-eval reads these (device for its cross-rank gathers).
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return 1

    @contextmanager
    def _running(self, requests: list) -> Iterator[tuple[Any, Callable[[dict], None], Any]]:
        """The pipeline installed, the stats file open and a progress bar, for one batch of requests."""
        with ExitStack() as stack:
            bound = stack.enter_context(self.pipeline.apply(self.loaded.model))
            stats = stack.enter_context(open(self.stats_path, "a")) if self.stats_path else None
            bar = stack.enter_context(
                tqdm(total=len(requests), desc="tokencompress", disable=self.rank != 0, leave=False)
            )

            def record(entry: dict) -> None:
                if stats is not None:
                    stats.write(json.dumps(entry) + "\n")

            yield bound, record, bar

    def generate_until(self, requests: list) -> list:
        """One answer per request, in request order."""
        out = []
        with self._running(requests) as (bound, record, bar):
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                text, entry = self._answer(bound, context, gen_kwargs or {}, visuals, task, doc_id)
                record({"task": task, "split": split, "doc_id": doc_id, **entry})
                counts = TokenCounts(
                    input_tokens=entry["input_tokens"], output_tokens=len(entry["token_ids"])
                )
                out.append(GenerationResult(text=text, token_counts=counts))
                bar.update(1)
        return out

    def generate_until_multi_round(self, requests: list) -> list:
        """One list of answers per request: round 0 from the request, later rounds from the task.

        Each round is answered from a fresh stream over that round's visuals (for OVO-Bench
        forward probes, the prefix clip up to the probe), as the benchmark's reference scripts
        do. The task's ``doc_to_text(doc, previous_output=..., round_idx=r,
        previous_round_info=...)`` gives ``(visuals, prompt, terminal, previous_output, info)``.
        """
        out = []
        with self._running(requests) as (bound, record, bar):
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                visuals, rounds, info = doc_to_visual(doc), [], None
                for round_idx in itertools.count():
                    if round_idx:
                        visuals, context, terminal, _, info = doc_to_text(
                            doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info
                        )
                        if terminal:
                            break
                    text, entry = self._answer(bound, context, gen_kwargs or {}, visuals, task, doc_id)
                    record({"task": task, "split": split, "doc_id": doc_id, "round": round_idx, **entry})
                    rounds.append(text)
                out.append(rounds)
                bar.update(1)
        return out

    def _answer(
        self, bound: Any, context: str, gen_kwargs: dict, visuals: Any, task: str, doc_id: int
    ) -> tuple[str, dict[str, Any]]:
        max_new, stops = decode_settings(gen_kwargs, self.args.max_new_tokens, task)
        stream = bound.stream(tokenizer=self.loaded.tokenizer)
        chunks = []
        for visual in _as_list(visuals):
            if isinstance(visual, str | os.PathLike):
                chunks += stream.add_video(visual, fps=self.args.fps, max_frames=self.args.max_frames)
            else:
                chunks += stream.add_frames(_image_frame(visual, task, doc_id))
        chunks += stream.flush()
        cache_tokens = stream.llm.length  # system prompt + visual tokens, before the question
        answer = stream.ask(context, max_new_tokens=max_new)
        text = cut_at_stop(answer.text, stops)
        question_tokens = len(
            self.loaded.tokenizer.encode(stream.question_text(context), add_special_tokens=False)
        )
        record = {
            "pipeline": self.pipeline.name,
            "frames": sum(c.frames for c in chunks),
            "chunks": len(chunks),
            "vit_tokens": sum(c.vit_tokens for c in chunks),
            "llm_visual_tokens": sum(c.llm_tokens for c in chunks),
            "cache_tokens": cache_tokens,
            "input_tokens": cache_tokens + question_tokens,
            "token_ids": answer.token_ids,
            "vit_ms": sum(c.vit_ms for c in chunks),
            "compress_ms": sum(c.compress_ms for c in chunks),
            "prefill_ms": sum(c.prefill_ms for c in chunks),
            "first_token_ms": answer.first_token_ms,
            "answer_ms": answer.total_ms,
            "response": text,
        }
        return text, record

    def loglikelihood(self, requests: list) -> list:
        task = requests[0].task_name if requests else "?"
        raise NotImplementedError(
            f"task '{task}' asks for loglikelihood (output_type loglikelihood/multiple_choice), which the "
            "tokencompress model does not score: it answers from a compressed KV cache by greedy decoding; "
            "use a generate_until variant of the task"
        )


def _pick_device(name: str | None) -> torch.device:
    if name:
        try:
            return torch.device(name)
        except RuntimeError:
            raise ValueError(
                f"--model_args device: '{name}' is not a torch device; use cpu, cuda or cuda:N"
            ) from None
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def _as_list(visuals: Any) -> list:
    if visuals is None:
        return []
    return list(visuals) if isinstance(visuals, list | tuple) else [visuals]


def _image_frame(visual: Any, task: str, doc_id: int) -> np.ndarray:
    """An image visual as one ``[H, W, 3]`` uint8 frame; anything else is refused by type."""
    if hasattr(visual, "convert") and hasattr(visual, "size"):  # a PIL image
        return np.asarray(visual.convert("RGB"))
    if isinstance(visual, np.ndarray) and visual.ndim == 3 and visual.shape[-1] == 3:
        return visual
    raise ValueError(
        f"task '{task}' doc {doc_id}: visual of type {type(visual).__name__} is not supported; "
        "the tokencompress model takes video paths, PIL images or [H, W, 3] uint8 arrays"
    )
