"""Run inside the lmms-eval venv: how lmms-eval itself sees the model. Prints one JSON object.

Everything goes through lmms-eval's own entry points (its registry, ``create_from_arg_string``,
its ``Instance``), the way the evaluator calls a model.
"""

from __future__ import annotations

import json

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
}
lm = cls.create_from_arg_string("pipeline=none,max_new_tokens=4", {"batch_size": "1", "device": None})
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
out["multi_round"] = error_of(
    lambda: lm.generate_until_multi_round([request("generate_until_multi_round", (), "tc_mr")])
)
print(json.dumps(out))
