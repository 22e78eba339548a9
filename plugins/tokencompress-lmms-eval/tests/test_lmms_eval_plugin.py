from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from lmms_venv import PLUGIN, REPO, venv_env
from tokencompress_lmms_eval import INSTALL_HINT
from tokencompress_lmms_eval.options import ModelArgs, cut_at_stop, decode_settings

from tokencompress import Pipeline, load_model
from tokencompress.media.video import sample_video_path

TASKS = PLUGIN / "tests" / "tasks"
STC = REPO / "pipelines" / "stc.yaml"
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
QUESTIONS = [
    ("What moves through the scene?", ["bicycles", "boats", "birds", "trains"], "A"),
    ("What kind of film is this?", ["news", "animation", "sports", "lecture"], "B"),
    ("Where is the speaker?", ["on a boat", "in a kitchen", "in a car", "on stage"], "C"),
]
MAX_FRAMES = 2


def _task_utils():
    """The tiny task's own utils.py, loaded under a private name (lmms-eval imports it as ``utils``)."""
    spec = importlib.util.spec_from_file_location("tc_tiny_video_utils", TASKS / "tc_tiny_video" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------- model_args and gen kwargs (no lmms-eval)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pipline": "x.yaml"}, "unknown key 'pipline' (did you mean 'pipeline'?)"),
        ({"batch_size": 8}, "--model_args batch_size: Value error, got 8; requests are answered one stream"),
        ({"fps": 0}, "--model_args fps: Input should be greater than 0"),
        (
            {"dtype": "fp8"},
            "--model_args dtype: Value error, got 'fp8'; use one of float32, bfloat16, float16",
        ),
        ({"max_frames": 0}, "--model_args max_frames: Input should be greater than or equal to 1"),
    ],
)
def test_bad_model_args_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        ModelArgs.parse(kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_model_args_spellings() -> None:
    base = ModelArgs.parse({"pretrained": "None", "pipeline": "baseline", "batch_size": "auto"})
    assert (base.model_name, base.pipeline_path, base.batch_size) == (None, None, 1)
    # lmms-eval turns numeric values into numbers before the model sees them
    named = ModelArgs.parse({"pretrained": "ckpt/llava", "pipeline": "pipelines/stc.yaml", "device": 0})
    assert (named.model_name, named.pipeline_path, named.device) == ("ckpt/llava", "pipelines/stc.yaml", "0")


@pytest.mark.parametrize(
    ("gen", "expected"),
    [
        ({}, (16, [])),
        ({"max_new_tokens": 4, "until": "\n\n"}, (4, ["\n\n"])),
        ({"until": ["</s>", ""], "temperature": 0, "do_sample": False, "num_beams": 1}, (16, ["</s>"])),
        ({"temperature": 0.7}, (16, [])),  # temperature without sampling changes nothing in greedy decoding
    ],
)
def test_decode_settings(gen: dict, expected: tuple) -> None:
    assert decode_settings(gen, 16, "t") == expected


@pytest.mark.parametrize(
    ("gen", "field"), [({"do_sample": True}, "do_sample"), ({"num_beams": 3}, "num_beams")]
)
def test_sampling_is_refused_with_the_override(gen: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"task 't': generation_kwargs.{field}.*--gen_kwargs {field}="):
        decode_settings(gen, 16, "t")


@pytest.mark.parametrize(
    ("text", "stops", "cut"),
    [
        ("A. bikes\n\nmore", ["\n\n"], "A. bikes"),
        ("ab<x>cd<y>", ["<y>", "<x>"], "ab"),
        ("abc", [], "abc"),
        ("abc", ["z"], "abc"),
    ],
)
def test_cut_at_earliest_stop(text: str, stops: list[str], cut: str) -> None:
    assert cut_at_stop(text, stops) == cut


def test_model_module_without_lmms_eval_names_the_install() -> None:
    if importlib.util.find_spec("lmms_eval") is not None:
        pytest.skip("lmms-eval is installed in this environment")
    proc = subprocess.run(
        [sys.executable, "-c", "import tokencompress_lmms_eval.model"],
        capture_output=True,
        text=True,
        env=venv_env(PYTHONPATH=f"{PLUGIN / 'src'}:{REPO}"),
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ImportError: the tokencompress lmms-eval model needs lmms-eval 0.7.x: {INSTALL_HINT}"
    )


# ----------------------------------------------------------------- through lmms-eval itself (its venv)
@pytest.mark.slow
def test_lmms_eval_registers_and_resolves_the_model(lmms, tmp_path: Path) -> None:
    # (`lmms-eval models` prints only lmms-eval's built-in table, not entry-point models: the
    # registry below is what `--model` resolves through)
    script = str(PLUGIN / "tests" / "venv_contract.py")
    stats = tmp_path / "stats.jsonl"
    proc = subprocess.run(
        [str(lmms.python), script, str(stats)], capture_output=True, text=True, env=lmms.env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    path = "tokencompress_lmms_eval.model.TokencompressLMM"
    assert (out["listed"], out["manifest_class_path"], out["class"], out["is_simple"]) == (
        True,
        path,
        path,
        True,
    )
    assert out["unknown_key"].startswith("ValueError: --model_args: unknown key 'fsp' (did you mean 'fps'?)")
    assert out["batch_size_4"].startswith("ValueError: --model_args batch_size: Value error, got 4;")
    assert (
        out["missing_pipeline"].startswith("ConfigError: ")
        and "/nonexistent/stc.yaml" in out["missing_pipeline"]
    )
    assert (out["rank_world"], out["pipeline"]) == ([0, 1], "baseline")
    assert out["image_answer"] == {
        "type": "GenerationResult",
        "is_generation_result": True,
        "output_tokens": 3,
    }
    assert out["do_sample"].startswith("ValueError: task 'tc_contract': generation_kwargs.do_sample is true")
    assert out["audio_visual"] == (
        "ValueError: task 'tc_contract' doc 0: visual of type dict is not supported; "
        "the tokencompress model takes video paths, PIL images or [H, W, 3] uint8 arrays"
    )
    assert out["loglikelihood"].startswith("NotImplementedError: task 'tc_mc' asks for loglikelihood")
    rounds = out["multi_round"]
    assert rounds["calls"] == [[1, rounds["rounds"][:1], None], [2, rounds["rounds"][:2], {"after": 1}]]
    assert rounds["rounds"] == rounds["singles"]  # each round is its own stream over that round's visuals
    assert (rounds["frames"], rounds["round_field"]) == ([1, 2], [0, 1])


def _reference(docs: list[dict], prompts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    """What ``tokencompress run`` answers for each doc: (text, token ids, LLM tokens per chunk)."""
    loaded = load_model(None)
    out = []
    with Pipeline.from_yaml(STC).apply(loaded.model) as bound:
        for doc, prompt in zip(docs, prompts, strict=True):
            stream = bound.stream(tokenizer=loaded.tokenizer)
            chunks = list(stream.add_video(doc["video"], max_frames=MAX_FRAMES))
            answer = stream.ask(prompt, max_new_tokens=8)
            out.append((answer.text.split("\n\n")[0], answer.token_ids, [c.llm_tokens for c in chunks]))
    return out


@pytest.mark.slow
def test_tiny_video_task_end_to_end(lmms, tmp_path: Path) -> None:
    docs = [
        {"id": i, "video": str(sample_video_path(clip)), "question": q, "options": opts, "answer": ans}
        for i, (clip, (q, opts, ans)) in enumerate(zip(CLIPS, QUESTIONS, strict=True))
    ]
    (tmp_path / "tc_tiny_video.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = tmp_path / "stats.jsonl"
    cmd = [
        lmms.cli,
        "--model", "tokencompress",
        "--model_args", f"pipeline={STC},max_frames={MAX_FRAMES},stats={stats}",
        "--tasks", "tc_tiny_video",
        "--include_path", str(TASKS),
        "--batch_size", "1",
        "--log_samples",
        "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    env = lmms.env(HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    (samples_file,) = (tmp_path / "out").rglob("*_samples_tc_tiny_video.jsonl")
    results = json.loads(results_file.read_text())
    samples = sorted(
        (json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    records = sorted((json.loads(line) for line in stats.read_text().splitlines()), key=lambda r: r["doc_id"])

    utils = _task_utils()
    prompts = [utils.doc_to_text(d, {"post_prompt": "Answer with the option's letter."}) for d in docs]
    assert [s["input"] for s in samples] == prompts  # lmms-eval built the prompt we reproduce
    expected = _reference(docs, prompts)
    # the model's answers are exactly the stream's greedy answers on the same frames, and lmms-eval
    # logged them (its default filter strips surrounding whitespace)
    assert [r["token_ids"] for r in records] == [ids for _, ids, _ in expected]
    assert [r["response"] for r in records] == [text for text, _, _ in expected]
    assert [s["filtered_resps"] for s in samples] == [text.strip() for text, _, _ in expected]
    # the pipeline really ran: STC-Pruner keeps 60 of LLaVA-OV's 196 pooled tokens per frame
    assert [r["frames"] for r in records] == [MAX_FRAMES] * 3
    assert (
        [r["llm_visual_tokens"] for r in records]
        == [sum(llm) for _, _, llm in expected]
        == [60 * MAX_FRAMES] * 3
    )
    assert [r["vit_tokens"] for r in records] == [729 * MAX_FRAMES] * 3
    assert [s["token_counts"][0]["output_tokens"] for s in samples] == [len(ids) for _, ids, _ in expected]
    # and lmms-eval scored them with the task's own process_results and mean aggregation
    scores = [
        utils.process_results(d, [s["filtered_resps"]])["accuracy"]
        for d, s in zip(docs, samples, strict=True)
    ]
    assert [s["accuracy"] for s in samples] == scores
    assert results["results"]["tc_tiny_video"]["accuracy,none"] == pytest.approx(sum(scores) / 3)
