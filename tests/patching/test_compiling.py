"""The opt-in torch.compile path, traced with the ``aot_eager`` backend (inductor is left to
``benchmarks/compiled.py``): compiled equals eager within float32 rounding (atol 1e-5, the
fixtures' tolerance for hidden states and scores), every strategy kernel runs compiled, and the
model is exactly as before after exit."""

from __future__ import annotations

import pytest
import torch

from tests.support.cli import assert_one_line_error, run_cli
from tokencompress import Pipeline, TokenCompressError
from tokencompress.bench import sample_frames
from tokencompress.media.video import sample_video_path
from tokencompress.patching.compiling import CompileOptions, compile_options
from tokencompress.patching.overrides import override_kind

ATOL = RTOL = 1e-5
CACHER = {"strategy": "stc_cacher", "update_token_ratio": 0.25, "cache_interval": 2}
PIPELINES = {
    "stc": {"pre_vit_block": [CACHER], "pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 6}]},
    "vidcom2": {"pre_prefill": [{"strategy": "vidcom2", "retention_ratio": 0.25}]},
    "baseline": {},
}
KERNELS = {
    "stc": {"reference_layer_packed", "sparse_layer_packed", "select_channels", "pruner_scores"},
    "vidcom2": {"select_channels", "unit_scores"},
    "baseline": set(),
}


class CountingBackend:
    """A torch.compile backend that runs the traced graphs as they are and counts their calls."""

    def __init__(self) -> None:
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1

        def run(*args: object) -> object:
            self.calls += 1
            return gm.forward(*args)

        return run


@pytest.fixture(scope="module")
def clip() -> object:
    frames, _, _ = sample_frames(sample_video_path("bikes.mp4"), 2.0, 4)
    return frames


def encode(model, pipe: Pipeline, frames, compile=None) -> tuple[list[torch.Tensor], object]:
    with torch.inference_mode(), pipe.apply(model, compile=compile) as bound:
        stream = bound.stream()
        return [stream.encode_only(frames[i : i + 1]).tokens for i in range(len(frames))], bound


@pytest.mark.parametrize("name", list(PIPELINES))
def test_compiled_path_matches_eager_on_a_real_clip(tiny_llava_ov, clip, name):
    """Reference and non-reference Cacher chunks, the pruners' scoring and the plain tower."""
    pipe = Pipeline.from_dict({"stages": PIPELINES[name]})
    eager, _ = encode(tiny_llava_ov, pipe, clip)
    backend = CountingBackend()
    compiled, bound = encode(tiny_llava_ov, pipe, clip, CompileOptions(backend=backend))
    assert len(compiled) == len(eager) == 4
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    names = {n.rsplit(".", 1)[-1] for n in bound.compiler.functions}
    assert KERNELS[name] | {"forward"} <= names  # the strategies' kernels and the layers' stock forward
    assert backend.graphs == bound.compiler.graphs >= 1
    # every chunk ran compiled graphs: without a Cacher the tower, with one its two kernels
    assert backend.calls >= len(clip) * len(bound.target.vit_layers())


def test_compile_is_opt_in_and_leaves_the_recipe_alone(tiny_llava_ov):
    pipe = Pipeline.from_dict({"stages": PIPELINES["stc"]})
    eager = pipe.bind(tiny_llava_ov)
    assert eager.compiler is None
    assert eager.steps == [
        *pipe.config.strategies(eager.steps[0].stage),
        *pipe.config.strategies(eager.steps[1].stage),
    ]
    compiled = pipe.bind(tiny_llava_ov, compile=CompileOptions(backend="eager"))
    assert all(a is not b and type(a) is type(b) for a, b in zip(compiled.steps, eager.steps, strict=True))
    assert not any("_sparse_kernel" in vars(s) for s in eager.steps)  # the shared recipe keeps eager kernels
    assert compile_options(True) == CompileOptions() and compile_options(False) is None
    assert compile_options("aot_eager").backend == "aot_eager"
    with pytest.raises(TokenCompressError, match="compile must be"):
        compile_options(3)


def test_model_is_exactly_as_before_after_a_compiled_apply(tiny_llava_ov, frames):
    model = tiny_llava_ov
    tower = model.model.vision_tower
    pipe = Pipeline.from_dict({"stages": PIPELINES["stc"]})
    layers = pipe.bind(model).target.vit_layers()
    pixels = pipe.bind(model).target.preprocess(list(frames[:2]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forwards = [layer.forward for layer in layers]
    with torch.inference_mode():
        plain = tower(pixels).last_hidden_state
    with pipe.apply(model, compile=CompileOptions(backend="eager")) as bound:
        # the block patch stays the outermost, plain-Python forward; the compiled stock is below it
        assert all(override_kind(layer.forward) == "block" for layer in layers)
        with pytest.raises(TokenCompressError, match="already inside"):
            with pipe.apply(model, compile=True):
                pass
        with torch.inference_mode():
            bound.stream().encode_only(frames[:1])
    assert not any("forward" in layer.__dict__ for layer in layers)
    assert [layer.forward for layer in layers] == forwards
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.inference_mode():
        assert torch.equal(tower(pixels).last_hidden_state, plain)


def test_compiled_baseline_tower_runs_the_compiled_layers(tiny_llava_ov, frames):
    pipe = Pipeline.from_dict({"stages": {}})
    with pipe.apply(tiny_llava_ov, compile=CompileOptions(backend="eager")) as bound:
        layers = bound.target.vit_layers()
        assert all(override_kind(layer.forward) == "compiled" for layer in layers)
    assert not any("forward" in layer.__dict__ for layer in layers)


def test_cli_compile_flags(capsys, tiny_checkpoint, tmp_path):
    yaml = tmp_path / "p.yaml"
    yaml.write_text(
        "name: c\nstream: {frames_per_chunk: 1}\nstages:\n  pre_vit_block:\n    - {strategy: stc_cacher}\n"
    )
    code, _, err = run_cli(capsys, "run", str(yaml), "--compile-mode", "max-autotune")
    assert_one_line_error(code, err, "--compile")
    code, out, err = run_cli(
        capsys,
        "run",
        str(yaml),
        "--model",
        str(tiny_checkpoint),
        "--max-frames",
        "2",
        "--compile",
        "--compile-backend",
        "eager",
        "--no-progress",
    )
    assert code == 0, err
    assert "compiled (torch.compile, backend eager, mode default)" in out
