"""``stream.decoder_kernels: packed``: the decoder's linears on prepacked weights, inside apply() only."""

from __future__ import annotations

import torch
from torch import nn

from tests.support.models import answer_and_cache
from tokencompress.cli.options import with_stream
from tokencompress.media.video import iter_frames, sample_video_path
from tokencompress.patching.decoder_linears import packed_decoder_linears
from tokencompress.pipeline.pipeline import Pipeline


def _pipe(kernels: str) -> Pipeline:
    return Pipeline.from_dict(
        {
            "name": kernels,
            "stream": {"decoder_kernels": kernels},
            "stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 8}]},
        }
    )


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [
        m for layer in model.model.language_model.layers for m in layer.modules() if isinstance(m, nn.Linear)
    ]


@torch.inference_mode()
def test_packed_decoder_matches_stock_and_is_removed_on_exit(tiny_llava_ov, monkeypatch) -> None:
    """A real clip through the tiny LLaVA-OV: every decoder linear runs packed inside apply(), the
    cache and first-answer logits stay within float32 rounding of the stock decoder, and on exit
    no linear keeps an instance forward."""
    from tokencompress.kernels import packed_linear

    model = tiny_llava_ov
    frames = [f.rgb for f in iter_frames(sample_video_path("bikes.mp4"), fps=2, max_frames=3)]
    linears = _linears(model)
    with _pipe("stock").apply(model) as bound:
        assert not any("forward" in m.__dict__ for m in linears)  # the default leaves them alone
        want, want_cache = answer_and_cache(bound, frames)

    routed = []
    real_call = packed_linear.PackedLinears.__call__

    def counting(self, modules, x, add=None):
        routed.append(modules[0])
        return real_call(self, modules, x, add)

    monkeypatch.setattr(packed_linear.PackedLinears, "__call__", counting)
    with _pipe("packed").apply(model) as bound:
        assert all("forward" in m.__dict__ for m in linears)
        got, cache = answer_and_cache(bound, frames)
    assert not any("forward" in m.__dict__ for m in linears)
    assert {id(m) for m in routed} == {id(m) for m in linears}
    torch.testing.assert_close(got.first_logits, want.first_logits, atol=1e-4, rtol=1e-4)
    for (k, v), (wk, wv) in zip(cache, want_cache, strict=True):
        torch.testing.assert_close(k, wk, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, wv, atol=1e-5, rtol=1e-5)


def test_the_linears_are_restored_when_the_block_fails(tiny_llava_ov) -> None:
    lm = tiny_llava_ov.model.language_model
    linears = _linears(tiny_llava_ov)
    try:
        with packed_decoder_linears(lm) as n:
            assert n == len(linears) > 0
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not any("forward" in m.__dict__ for m in linears)
    with packed_decoder_linears(lm, active=False) as n:
        assert n == 0 and not any("forward" in m.__dict__ for m in linears)


def test_stream_setting_from_yaml_and_the_cli_override() -> None:
    pipe = _pipe("stock")
    assert pipe.config.stream.decoder_kernels == "stock"
    packed = with_stream(pipe, decoder_kernels="packed", prefill_chunks=None)
    assert (
        packed.config.stream.decoder_kernels == "packed"
        and packed.config.stream == pipe.config.stream.model_copy(update={"decoder_kernels": "packed"})
    )
    assert with_stream(pipe, decoder_kernels=None) is pipe
