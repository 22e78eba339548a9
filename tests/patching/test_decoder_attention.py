"""The grouped-K/V decoder attention: bit-identical to transformers' sdpa, used only inside apply()."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import DynamicCache

from tests.support.models import answer_and_cache, build_tiny_llava_ov
from tokencompress.media.video import iter_frames, sample_video_path
from tokencompress.patching.decoder_attention import NAME, GroupedKVAttention, sdpa_grouped_kv
from tokencompress.pipeline.pipeline import Pipeline


class _Module(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 4),
    q_len=st.integers(1, 9),
    past=st.integers(0, 40),
    head_dim=st.sampled_from([8, 16]),
    additive=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_equals_transformers_sdpa_bit_for_bit(
    kv_heads, groups, q_len, past, head_dim, additive, seed
) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(seed)
    s = past + q_len
    q = torch.randn(1, kv_heads * groups, q_len, head_dim, generator=gen)
    k, v = (torch.randn(1, kv_heads, s, head_dim, generator=gen) for _ in range(2))
    mask = torch.ones(q_len, s, dtype=torch.bool).tril(past)[None, None]  # causal after a cache
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    module = _Module(groups)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=head_dim**-0.5)
    got, _ = sdpa_grouped_kv(module, q, k, v, mask, scaling=head_dim**-0.5)
    assert got.shape == want.shape == (1, q_len, kv_heads * groups, head_dim)
    assert torch.equal(got, want)


@torch.inference_mode()
def test_a_pipeline_prefills_with_grouped_kv_and_changes_nothing(monkeypatch, tiny_llava_ov) -> None:
    """A real clip through the tiny LLaVA-OV (2 K/V heads for 4 query heads): the cache and the
    answer inside apply() equal a bound-only stream's bit for bit, the grouped call really ran,
    and the decoder's config is back to sdpa afterwards."""
    model = tiny_llava_ov
    frames = [f.rgb for f in iter_frames(sample_video_path("bikes.mp4"), fps=2, max_frames=3)]
    pipe = Pipeline.from_dict(
        {"name": "p", "stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 8}]}}
    )
    decoder_config = pipe.bind(model).target.language_model.config
    assert decoder_config.num_key_value_heads < decoder_config.num_attention_heads
    plain_answer, plain_cache = answer_and_cache(pipe.bind(model), frames)

    grouped = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        grouped.append(kwargs.get("enable_gqa", False))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with pipe.apply(model) as bound:
        assert decoder_config._attn_implementation == NAME
        answer, cache = answer_and_cache(bound, frames)
    assert decoder_config._attn_implementation == "sdpa"
    assert sum(grouped) >= len(frames) * decoder_config.num_hidden_layers  # every chunk, every layer
    assert torch.equal(answer.first_logits, plain_answer.first_logits)
    assert answer.token_ids == plain_answer.token_ids
    for (k, v), (pk, pv) in zip(cache, plain_cache, strict=True):
        assert torch.equal(k, pk) and torch.equal(v, pv)


def test_the_config_is_restored_when_the_block_fails_and_other_kinds_are_left_alone() -> None:
    model = build_tiny_llava_ov()
    lm = model.model.language_model
    with pytest.raises(RuntimeError, match="boom"), GroupedKVAttention(lm) as on:
        assert on.switched and lm.config._attn_implementation == NAME
        raise RuntimeError("boom")
    assert lm.config._attn_implementation == "sdpa"
    assert not any("_tokencompress_grouped_kv" in vars(m) for m in lm.modules())
    lm.config._attn_implementation = "eager"
    with GroupedKVAttention(lm) as on:
        assert not on.switched and lm.config._attn_implementation == "eager"
    with GroupedKVAttention(None) as on:
        assert not on.switched


@torch.inference_mode()
def test_a_thread_outside_the_streams_gets_stock_attention(monkeypatch, tiny_llava_ov) -> None:
    """The config switch is visible to every thread, so the grouped call is routed per thread: a
    plain decoder call from another thread while a pipeline is applied runs transformers' stock
    sdpa (no ``enable_gqa``), and a stream's prefill in this thread runs the grouped one."""
    import threading

    model = tiny_llava_ov
    pipe = Pipeline.from_dict({"name": "p", "stages": {}})
    lm = pipe.bind(model).target.language_model
    calls: list[tuple[str, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        # the grouped call: a mask and grouped heads together (stock sdpa groups only without a mask)
        grouped = kwargs.get("enable_gqa", False) and kwargs.get("attn_mask") is not None
        calls.append((threading.current_thread().name, grouped))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        plain = model.model.language_model(ids).last_hidden_state
    with pipe.apply(model) as bound:
        assert lm.config._attn_implementation == NAME
        out: dict[str, torch.Tensor] = {}

        def outside() -> None:
            with torch.no_grad():
                cache = DynamicCache(config=lm.config)
                lm(ids, past_key_values=cache)  # a cache, then a masked chunk: the grouped case
                out["h"] = lm(torch.tensor([[8, 9]]), past_key_values=cache).last_hidden_state

        calls.clear()
        worker = threading.Thread(target=outside, name="outside")
        worker.start()
        worker.join()
        assert calls and not any(gqa for _, gqa in calls)  # stock sdpa only
        calls.clear()
        stream = bound.stream()
        stream.prefill_ids(torch.tensor([5, 6, 7]))
        stream.prefill_ids(torch.tensor([8, 9]))
        assert any(gqa for _, gqa in calls)  # the stream's masked prefill read grouped K/V
    with torch.no_grad():
        assert torch.equal(model.model.language_model(ids).last_hidden_state, plain)
