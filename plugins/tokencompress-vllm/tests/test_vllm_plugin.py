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


def test_the_plugin_without_vllm_is_one_line() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - the project's environment has no vLLM
        pytest.skip("vLLM is installed here")
    from tokencompress_vllm import register

    for call in (register, lambda: __import__("tokencompress_vllm.qwen")):
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


@pytest.fixture(scope="module")
def served(vllm_env, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("vllm-same-tokens")
    checkpoint = work / "tiny-qwen2.5-vl"
    proc = subprocess.run(
        [str(vllm_env.python), str(HERE / "make_checkpoint.py"), str(checkpoint)],
        capture_output=True,
        text=True,
        env=vllm_env.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = _frames()
    np.save(work / "frames.npy", frames)
    pipelines = {name: _pipeline(stages, name=name) for name, stages in CASES.items()}
    pipelines["evs_whole_video"] = _pipeline(
        CASES["evs"], {"frames_per_chunk": FRAMES, "fps": 2.0}, "evs_whole"
    )
    pipelines["kv_cache"] = _pipeline({"kv_cache": [{"strategy": "sliding_window"}]}, name="kv")
    cases = [{"name": "vllm_evs", "video_pruning_rate": 0.75}]
    for name, doc in pipelines.items():
        (work / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        cases.append(
            {"name": name, "additional_config": {"tokencompress": {"pipeline": str(work / f"{name}.yaml")}}}
        )
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_vllm_keeps_the_tokens_the_transformers_path_keeps(served: dict, name: str) -> None:
    got = served["results"][name]
    assert "error" not in got, got
    (record,) = [r for r in got["kept"] if r["grid"] == [FRAMES // 2, 32, 32]]
    expected = _transformers_kept(
        served["work"] / "tiny-qwen2.5-vl", served["work"] / f"{name}.yaml", served["frames"]
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


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("kv_cache", "stages.kv_cache[0]: strategy 'sliding_window' acts on the decoder's KV cache"),
        ("missing", "no.yaml: pipeline file not found"),
    ],
)
def test_vllm_refuses_at_engine_start_in_one_line(served: dict, name: str, message: str) -> None:
    error = served["results"][name]["error"]
    assert error.startswith("EngineStartError: ") and message in error and "\n" not in error
