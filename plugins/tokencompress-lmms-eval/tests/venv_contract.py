"""Run inside the lmms-eval venv: how lmms-eval itself sees the model. Prints one JSON object.

Everything goes through lmms-eval's own entry points (its registry, ``create_from_arg_string``,
its ``Instance``), the way the evaluator calls a model.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.models import get_model, get_model_manifest, list_available_models


def error_of(fn) -> str:
    try:
        fn()
    except Exception as exc:  # the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def request(kind: str, args: tuple, task: str = "tc_contract") -> Instance:
    return Instance(
        request_type=kind, arguments=args, idx=0, metadata={"task": task, "doc_id": 0, "repeats": 1}
    )


manifest = get_model_manifest("tokencompress")
cls = get_model("tokencompress")
out: dict = {
    "listed": "tokencompress" in list_available_models(),
    "manifest_class_path": manifest.simple_class_path,
    "class": f"{cls.__module__}.{cls.__qualname__}",
    "is_simple": cls.is_simple,
    "unknown_key": error_of(lambda: cls.create_from_arg_string("pipeline=none,fsp=1", {"batch_size": 1})),
    "batch_size_4": error_of(lambda: cls.create_from_arg_string("pipeline=none", {"batch_size": 4})),
    "missing_pipeline": error_of(lambda: cls.create_from_arg_string("pipeline=/nonexistent/stc.yaml", {})),
}
stats = sys.argv[1]
lm = cls.create_from_arg_string(
    f"pipeline=none,max_new_tokens=4,stats={stats}", {"batch_size": "1", "device": None}
)
out["rank_world"] = [lm.rank, lm.world_size]
out["pipeline"] = lm.pipeline.name

# Image visuals become single frames; the evaluator fills task_dict before calling the model.
frame = np.full((48, 64, 3), 90, np.uint8)
lm.task_dict = {"tc_contract": {"test": [{"frame": frame}]}}
greedy = {"max_new_tokens": 3, "until": [], "do_sample": False}
res = lm.generate_until(
    [request("generate_until", ("Describe.", greedy, lambda d: [d["frame"]], 0, "tc_contract", "test"))]
)
out["image_answer"] = {
    "type": type(res[0]).__name__,
    "is_generation_result": isinstance(res[0], GenerationResult),
    "output_tokens": res[0].token_counts.output_tokens,
}
sampled = dict(greedy, do_sample=True)
out["do_sample"] = error_of(
    lambda: lm.generate_until(
        [request("generate_until", ("x", sampled, lambda d: [], 0, "tc_contract", "test"))]
    )
)
out["audio_visual"] = error_of(
    lambda: lm.generate_until(
        [request("generate_until", ("x", greedy, lambda d: [{"array": [0.0]}], 0, "tc_contract", "test"))]
    )
)
out["loglikelihood"] = error_of(
    lambda: lm.loglikelihood(
        [request("loglikelihood", ("x", " A", lambda d: [], 0, "tc_mc", "test"), "tc_mc")]
    )
)
# Multi-round: round 0 from the request, then the task's doc_to_text until it says terminal.
frames = [np.full((48, 64, 3), 40 * (i + 1), np.uint8) for i in range(2)]
lm.task_dict["tc_rounds"] = {"test": [{"frames": frames}]}
calls = []


def rounds_doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
    calls.append([round_idx, list(previous_output), previous_round_info])
    if round_idx == 2:
        return None, None, True, previous_output, None
    return doc["frames"][: round_idx + 1], f"round {round_idx}", False, previous_output, {"after": round_idx}


args = ("round 0", greedy, lambda d: d["frames"][:1], rounds_doc_to_text, 0, "tc_rounds", "test")
(rounds,) = lm.generate_until_multi_round([request("generate_until_multi_round", args, "tc_rounds")])
# the same prompts and frames as single requests, for comparison
lm.task_dict["tc_single"] = {"test": [{"frames": frames[: i + 1]} for i in range(2)]}
singles = lm.generate_until(
    [
        request(
            "generate_until",
            (f"round {i}", greedy, lambda d: d["frames"], i, "tc_single", "test"),
            "tc_single",
        )
        for i in range(2)
    ]
)
with open(stats) as fh:
    entries = [json.loads(line) for line in fh]
out["multi_round"] = {
    "rounds": rounds,
    "singles": [r.text for r in singles],
    "calls": calls,
    "frames": [e["frames"] for e in entries if e["task"] == "tc_rounds"],
    "round_field": [e["round"] for e in entries if e["task"] == "tc_rounds"],
}
print(json.dumps(out))
