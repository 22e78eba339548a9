from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from tokencompress_vllm import INSTALL_HINT
from tokencompress_vllm.groups import TEXT, lumped, outer_starts_as_text, relayout, surplus_columns
from tokencompress_vllm.plan import Geometry, ServingPlan
from tokencompress_vllm.serving import configure

from tokencompress import CompatibilityError, ConfigError, Pipeline, Stage, load_model
from tokencompress.media.frames import resize_frames
from tokencompress.media.video import sample_video_path

HERE = Path(__file__).resolve().parent
QWEN = Geometry("qwen2_5_vl", merge=2, temporal_patch=2, llm_dim=64)
FRAMES, SIDE = 16, 448  # 8 temporal slices of 16 x 16 merged tokens
CHUNK = {"frames_per_chunk": 4, "fps": 2.0}
CASES = {  # the four strategies of the same-tokens check, 4 frames (2 slices) per chunk
    "evs": {"post_vit": [{"strategy": "evs", "video_pruning_rate": 0.75}]},
    "stc_pruner": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 64}]},
    "vidcom2_stream": {"pre_prefill": [{"strategy": "vidcom2_stream", "tokens_per_frame": 64}]},
    "uniform_grid": {"pre_prefill": [{"strategy": "uniform_grid", "tokens_per_frame": 64}]},
}


def _pipeline(stages: dict, stream: dict = CHUNK, name: str = "p") -> dict:
    return {"name": name, "target": "auto", "stream": stream, "stages": stages}


def _plan(stages: dict, stream: dict = CHUNK) -> ServingPlan:
    return ServingPlan(Pipeline.from_dict(_pipeline(stages, stream)).config, QWEN)


# --------------------------------------------------------------- no vLLM needed
@pytest.mark.parametrize(
    ("stages", "stream", "message"),
    [
        (
            {"kv_cache": [{"strategy": "sliding_window"}]},
            CHUNK,
            "stages.kv_cache[0]: strategy 'sliding_window' acts on the decoder's KV cache",
        ),
        (
            {"pre_vit_block": [{"strategy": "stc_cacher"}]},
            CHUNK,
            "stages.pre_vit_block[0]: strategy 'stc_cacher' runs inside the vision encoder's blocks",
        ),
        (
            {"post_vit": [{"strategy": "visionzip", "dominant": 42, "contextual": 7}]},
            CHUNK,
            "stages.post_vit[0]: strategy 'visionzip' reads attention, keys of the encoder",
        ),
        (
            {"post_vit": [{"strategy": "dtd", "threshold": 0.5}]},
            CHUNK,
            "strategy 'dtd' keeps a number of tokens that follows the data (planned_count is None)",
        ),
        (
            {"pre_prefill": [{"strategy": "stc_pruner"}]},
            {"frames_per_chunk": 1},
            "stream.frames_per_chunk = 1: vLLM pairs every 2 consecutive frames",
        ),
    ],
)
def test_what_vllm_cannot_host_is_refused_with_the_reason(stages: dict, stream: dict, message: str) -> None:
    with pytest.raises(CompatibilityError) as err:
        _plan(stages, stream)
    text = str(err.value)
    assert message in text and "\n" not in text
    if "frames_per_chunk" not in message:
        assert "what works there: post_vit / pre_prefill strategies" in text


def test_counts_follow_the_shape_and_the_chunk_place() -> None:
    assert _plan(CASES["evs"]).counts([FRAMES // 2, 32, 32]) == [256, 128, 128, 128]  # chunk 0 keeps frame 0
    assert _plan(CASES["stc_pruner"]).counts([5, 32, 32]) == [128, 128, 64]  # a shorter last chunk
    assert not _plan({}).active


def test_select_keeps_the_planned_rows_of_each_chunk_in_order() -> None:
    plan = _plan(CASES["stc_pruner"])
    emb = torch.randn(8 * 256, 64, generator=torch.Generator().manual_seed(0))
    chosen = plan.select(emb, [8, 32, 32])
    assert chosen.index.tolist() == sorted(set(chosen.index.tolist())) and chosen.index.numel() == 512
    assert torch.equal(chosen.tokens, emb[chosen.index])
    assert [int(((chosen.index >= 512 * c) & (chosen.index < 512 * (c + 1))).sum()) for c in range(4)] == [
        128
    ] * 4


def test_qwen3_counts_fit_vllms_slice_groups() -> None:
    """Qwen3-VL (196 tokens per slice): the planned total goes into the first of a video's groups,
    as vLLM's EVS writes it; the model lays out the real spread after the encoder ran."""
    plan = ServingPlan(Pipeline.from_dict(_pipeline(CASES["stc_pruner"])).config, QWEN3)
    assert plan.counts(GRID3) == [128] * 4 and lumped(plan.count(GRID3), 8) == [512] + [0] * 7
    V, S, E, T = 9, 7, 8, 1  # video pad, vision start / end, a timestamp token
    unpruned = [0, S, T, S, V, V, V, E, T, S, V, V, V, E, E, 0, T, S, V, V, V, E]  # 2 videos: 2 slices, 1
    assert relayout(unpruned, V, [4, 2], [2, 1]) == [0, S, T, S, V, V, V, V, E, T, S, E, E, 0, T, S, V, V, E]
    with pytest.raises(ValueError, match="groups of 1 video"):
        relayout(unpruned[:14], V, [4, 2], [2, 1])
    # the standard placeholder's outer start marker (before the first timestamp) reads as text
    standard = [0, S, T, S, V, E, T, S, E, E, 0]
    assert outer_starts_as_text(standard, S, {V, E, 5}) == [0, TEXT, T, S, V, E, T, S, E, E, 0]
    # 2 tokens kept of a 4-token slice: vLLM's first positions give that group 4 columns
    assert surplus_columns([0, S, V, V, E, T, S, E, 0], V, [(2, 6, 4)]) == [4, 5]
    assert surplus_columns([0, S, V, V, V, V, V, E, 0], V, [(2, 6, 4)]) == []


def _vllm_config(
    tmp_path: Path, architecture: str, settings: object, rate: float | None = None
) -> SimpleNamespace:
    vision = SimpleNamespace(spatial_merge_size=2, temporal_patch_size=2)
    hf = SimpleNamespace(vision_config=vision, hidden_size=64)
    model = SimpleNamespace(
        hf_config=hf, architecture=architecture, multimodal_config=SimpleNamespace(video_pruning_rate=rate)
    )
    return SimpleNamespace(additional_config={"tokencompress": settings}, model_config=model)


def test_engine_start_refusals_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "stc.yaml"
    path.write_text(yaml.safe_dump(_pipeline(CASES["stc_pruner"])))
    cases = [
        (
            _vllm_config(tmp_path, "LlavaForConditionalGeneration", str(path)),
            "model architecture 'LlavaForConditionalGeneration' is not one",
        ),
        (
            _vllm_config(tmp_path, "Qwen2_5_VLForConditionalGeneration", str(tmp_path / "no.yaml")),
            "no.yaml: pipeline file not found",
        ),
        (
            _vllm_config(tmp_path, "Qwen2_5_VLForConditionalGeneration", {"pipline": str(path)}),
            "additional_config.tokencompress: unknown key 'pipline' (did you mean 'pipeline'?)",
        ),
        (
            _vllm_config(tmp_path, "Qwen2_5_VLForConditionalGeneration", str(path), 0.5),
            "both prune the video tokens",
        ),
    ]
    for config, message in cases:
        with pytest.raises((CompatibilityError, ConfigError)) as err:
            configure(config)
        assert message in str(err.value) and "\n" not in str(err.value)
    good = _vllm_config(tmp_path, "Qwen2_5_VLForConditionalGeneration", {"pipeline": str(path)})
    configure(good)
    carried = good.model_config.hf_config.tokencompress_serving
    (step,) = carried["pipeline"]["stages"]["pre_prefill"]
    assert (step["strategy"], step["tokens_per_frame"], carried["source"]) == ("stc_pruner", 64, str(path))
    qwen3 = _vllm_config(tmp_path, "Qwen3VLForConditionalGeneration", str(path))
    configure(qwen3)
    assert (
        qwen3.model_config.hf_config.tokencompress_serving["architecture"]
        == "Qwen3VLForConditionalGeneration"
    )


def test_the_plugin_without_vllm_is_one_line() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - the project's environment has no vLLM
        pytest.skip("vLLM is installed here")
    from tokencompress_vllm import register

    for call in (
        register,
        lambda: __import__("tokencompress_vllm.qwen"),
        lambda: __import__("tokencompress_vllm.qwen3"),
    ):
        with pytest.raises(ImportError) as err:
            call()
        assert str(err.value).startswith(INSTALL_HINT) and "\n" not in str(err.value)


# --------------------------------------------------------------- inside vLLM
def _frames() -> np.ndarray:
    """16 frames of bikes.mp4 at 448 x 448 (both runtimes then resize nothing)."""
    import av

    with av.open(str(sample_video_path("bikes.mp4"))) as container:
        frames = [
            f.to_ndarray(format="rgb24")
            for _, f in zip(range(FRAMES), container.decode(video=0), strict=False)
        ]
    x = resize_frames(np.stack(frames), (SIDE, SIDE))
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _transformers_kept(checkpoint: Path, pipeline: Path, frames: np.ndarray) -> list[int]:
    """Kept indices (into the video's unpruned tokens) of a Stream on the transformers path."""
    loaded = load_model(str(checkpoint))
    kept: list[torch.Tensor] = []
    with Pipeline.from_yaml(pipeline).apply(loaded.model) as bound:
        per = bound.target.stage_info()[Stage.PRE_PREFILL].tokens_per_frame
        encode = bound.encode_chunk

        def capture(states, chunk_frames, position, stream_id=0):  # type: ignore[no-untyped-def]
            encoded = encode(states, chunk_frames, position, stream_id)
            kept.append(encoded.tokens.source + position.token_frame * per)
            return encoded

        bound.encode_chunk = capture  # type: ignore[method-assign]
        stream = bound.stream()
        stream.add_frames(frames)
        stream.flush()
    return torch.cat(kept).tolist()


def _serve(vllm_env, work: Path, model: str, pipelines: dict[str, dict], cases: list[dict]) -> dict:
    """Save the tiny ``model`` checkpoint, write the pipelines, run :mod:`engine_check` on the cases
    (each pipeline is a case of its own, with the prompt ``cases`` gives it, else the standard one)."""
    checkpoint = work / "checkpoint"
    proc = subprocess.run(
        [str(vllm_env.python), str(HERE / "make_checkpoint.py"), str(checkpoint), model],
        capture_output=True,
        text=True,
        env=vllm_env.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = _frames()
    np.save(work / "frames.npy", frames)
    prompts = {c["name"]: c["prompt"] for c in cases if "prompt" in c}
    cases = [c for c in cases if "video_pruning_rate" in c or "additional_config" in c]
    for name, doc in pipelines.items():
        (work / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        case = {
            "name": name,
            "additional_config": {"tokencompress": {"pipeline": str(work / f"{name}.yaml")}},
        }
        cases.append({**case, **({"prompt": prompts[name]} if name in prompts else {})})
    cases.append(
        {"name": "missing", "additional_config": {"tokencompress": {"pipeline": str(work / "no.yaml")}}}
    )
    (work / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        [str(vllm_env.python), str(HERE / "engine_check.py"), str(checkpoint), str(work / "frames.npy"),
         str(work / "cases.json"), str(work)],
        capture_output=True,
        text=True,
        env=vllm_env.env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"results": json.loads(proc.stdout.strip().splitlines()[-1]), "work": work, "frames": frames}


def _common_pipelines() -> dict[str, dict]:
    pipelines = {name: _pipeline(stages, name=name) for name, stages in CASES.items()}
    pipelines["evs_whole_video"] = _pipeline(
        CASES["evs"], {"frames_per_chunk": FRAMES, "fps": 2.0}, "evs_whole"
    )
    pipelines["kv_cache"] = _pipeline({"kv_cache": [{"strategy": "sliding_window"}]}, name="kv")
    return pipelines


@pytest.fixture(scope="module")
def served(vllm_env, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("vllm-same-tokens")
    return _serve(
        vllm_env, work, "qwen2_5_vl", _common_pipelines(), [{"name": "vllm_evs", "video_pruning_rate": 0.75}]
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_vllm_keeps_the_tokens_the_transformers_path_keeps(served: dict, name: str) -> None:
    got = served["results"][name]
    assert "error" not in got, got
    (record,) = [r for r in got["kept"] if r["grid"] == [FRAMES // 2, 32, 32]]
    expected = _transformers_kept(
        served["work"] / "checkpoint", served["work"] / f"{name}.yaml", served["frames"]
    )
    assert record["kept"] == expected
    # the prompt holds the planned count: the same text around it as with vLLM's EVS (512 video tokens)
    plan = ServingPlan(Pipeline.from_dict(_pipeline(CASES[name])).config, QWEN)
    text = served["results"]["vllm_evs"]["prompt_tokens"] - 512
    assert got["prompt_tokens"] == text + plan.count([FRAMES // 2, 32, 32]) == text + len(expected)


def test_vllm_own_evs_and_ours_agree_at_the_same_rate(served: dict) -> None:
    theirs, ours = served["results"]["vllm_evs"], served["results"]["evs_whole_video"]
    assert "error" not in theirs and "error" not in ours
    assert ours["prompt_tokens"] == theirs["prompt_tokens"]  # 2048 video tokens -> 512
    assert ours["answer"] == theirs["answer"]
    assert ours["logprobs"] == pytest.approx(theirs["logprobs"], abs=1e-4)


REFUSALS = [
    ("kv_cache", "stages.kv_cache[0]: strategy 'sliding_window' acts on the decoder's KV cache"),
    ("missing", "no.yaml: pipeline file not found"),
]


def _refused(results: dict, name: str, message: str) -> None:
    error = results[name]["error"]
    assert error.startswith("EngineStartError: ") and message in error and "\n" not in error


@pytest.mark.parametrize(("name", "message"), REFUSALS)
def test_vllm_refuses_at_engine_start_in_one_line(served: dict, name: str, message: str) -> None:
    _refused(served["results"], name, message)


# --------------------------------------------------------------- Qwen3-VL inside vLLM
QWEN3 = Geometry("qwen3_vl", merge=2, temporal_patch=2, llm_dim=64)
GRID3 = [FRAMES // 2, 28, 28]  # 16-px patches: 14 x 14 = 196 merged tokens per slice, 1568 in all
QWEN3_CASES = {
    **CASES,
    "uniform_grid_small": {"pre_prefill": [{"strategy": "uniform_grid", "tokens_per_frame": 16}]},
}
"""The four strategies, and one that keeps fewer tokens (128) than one slice holds (196)."""


@pytest.fixture(scope="module")
def served3(vllm_env, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Qwen3-VL: the plugin's pipelines with the standard placeholder (an outer
    ``<|vision_start|>`` around the slice groups), vLLM's EVS and ours over the whole video with a
    bare ``<|video_pad|>`` (vLLM's own EVS misplaces its positions with the standard one, and fails
    on this short prompt)."""
    work = tmp_path_factory.mktemp("vllm-qwen3-same-tokens")
    pipelines = _common_pipelines()
    pipelines["uniform_grid_small"] = _pipeline(QWEN3_CASES["uniform_grid_small"], name="small")
    cases = [
        {"name": "vllm_evs", "video_pruning_rate": 0.75, "prompt": "bare"},
        {"name": "vllm_evs_main", "video_pruning_rate": 0.75, "prompt": "bare", "evs_main_features": True},
        {"name": "evs_whole_video", "prompt": "bare"},
    ]
    return _serve(vllm_env, work, "qwen3_vl", pipelines, cases)


@pytest.mark.parametrize("name", sorted(QWEN3_CASES))
def test_qwen3_vllm_keeps_the_tokens_the_transformers_path_keeps(served3: dict, name: str) -> None:
    got = served3["results"][name]
    assert "error" not in got, got
    (record,) = [r for r in got["kept"] if r["grid"] == GRID3]
    work = served3["work"]
    expected = _transformers_kept(work / "checkpoint", work / f"{name}.yaml", served3["frames"])
    assert record["kept"] == expected
    # the prompt: vLLM's EVS prompt (392 video tokens, bare placeholder) with the planned count,
    # and the standard placeholder's 2 outer markers
    plan = ServingPlan(Pipeline.from_dict(_pipeline(QWEN3_CASES[name])).config, QWEN3)
    text = served3["results"]["vllm_evs"]["prompt_tokens"] - 392
    assert got["prompt_tokens"] == text + 2 + plan.count(GRID3) == text + 2 + len(expected)


def test_qwen3_vllm_own_evs_and_ours_agree_at_the_same_rate(served3: dict) -> None:
    """vLLM's EVS scores Qwen3-VL rows with their DeepStack levels appended (a few other tokens:
    another answer); scoring the main features, as tokencompress does, it answers as ours."""
    results = served3["results"]
    theirs, ours = results["vllm_evs_main"], results["evs_whole_video"]
    assert "error" not in theirs and "error" not in ours and "error" not in results["vllm_evs"]
    assert (
        ours["prompt_tokens"] == theirs["prompt_tokens"] == results["vllm_evs"]["prompt_tokens"]
    )  # 1568 -> 392
    assert ours["answer"] == theirs["answer"]
    assert ours["logprobs"] == pytest.approx(theirs["logprobs"], abs=1e-4)


@pytest.mark.parametrize(("name", "message"), REFUSALS)
def test_qwen3_vllm_refuses_at_engine_start_in_one_line(served3: dict, name: str, message: str) -> None:
    _refused(served3["results"], name, message)
