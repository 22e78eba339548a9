"""Attention taps: the received-attention kernel, the tapped layer against the stock one, and the
tap's install (reversible, only during a chunk, only in the chunk's thread, nesting refused)."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from tests.support.pipelines import pipeline
from tokencompress import TokenCompressError
from tokencompress.api.types import ChunkInfo
from tokencompress.kernels.attention_received import attention_received
from tokencompress.patching.attention_tap import tapped_layer
from tokencompress.patching.block_routing import BlockPatch
from tokencompress.strategies.visionzip_select import dominant_scores_mean_received
from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter

TOL = {"atol": 1e-5, "rtol": 1e-5}
"""The tapped layer against the stock (fused-attention) layer: float32 rounding of an explicit
softmax instead of SDPA's kernel (observed ≤ 2e-7 on these shapes)."""


def _layer(width: int = 32, heads: int = 4, seed: int = 0) -> SiglipEncoderLayer:
    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=2 * width)
    cfg._attn_implementation = "sdpa"
    return SiglipEncoderLayer(cfg).eval()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 3),
    n=st.integers(1, 40),
    block=st.integers(1, 50),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernel_is_sdpa_plus_the_recompute_saliency(
    b: int, h: int, n: int, block: int, masked: bool, seed: int
) -> None:
    """Output = SDPA within float tolerance; received = the recompute score (same blocks: same bits)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, 8, generator=g) for _ in range(3))
    mask = None
    if masked:  # window-like: every query sees itself at least
        seg = torch.randint(0, 3, (n,), generator=g)
        mask = torch.zeros(1, n, n).masked_fill(seg[:, None] != seg[None, :], float("-inf"))
    o, received = attention_received(q, k, v, 8**-0.5, mask, block)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=None if mask is None else mask[:, None] == 0
    )
    torch.testing.assert_close(o, want, **TOL)
    assert torch.equal(received, dominant_scores_mean_received(q, k, 8**-0.5, block, mask))
    torch.testing.assert_close(received.sum(dim=1), torch.ones(b), atol=1e-5, rtol=0)  # each row sums to 1


def test_kernel_refuses_bad_shapes() -> None:
    x = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="expected q"):
        attention_received(x, x[:, :1], x, 1.0)
    with pytest.raises(ValueError, match="block"):
        attention_received(x, x, x, 1.0, block=0)


@torch.no_grad()
def test_tapped_layer_is_the_stock_layer() -> None:
    layer = _layer()
    h = torch.randn(3, 50, 32)
    out, received = tapped_layer(SiglipBlockAdapter(layer), h, block=16)
    torch.testing.assert_close(out, layer(h, None), **TOL)
    assert received.shape == (3, 50)


@torch.no_grad()
def test_the_tap_runs_only_in_the_chunk_thread_and_leaves_nothing_behind() -> None:
    layer = _layer()
    h = torch.randn(2, 25, 32)
    stock = layer(h, None)
    patch = BlockPatch([layer], [SiglipBlockAdapter(layer)], [], probe_layers=[0], tap_layers=[0])
    with patch:
        assert torch.equal(layer(h, None), stock)  # outside a chunk: the stock forward
        info = ChunkInfo(0, 0, 2)
        seen: dict[str, torch.Tensor] = {}
        with patch.chunk([], info):
            worker = threading.Thread(target=lambda: seen.update(other=layer(h, None)))
            worker.start()
            worker.join()
            assert 0 not in info.probes  # another thread ran the stock layer and recorded nothing
            seen["tapped"] = layer(h, None)
        probe = info.probes[0]
    assert torch.equal(seen["other"], stock)
    torch.testing.assert_close(seen["tapped"], stock, **TOL)
    assert torch.equal(probe.hidden, h) and probe.received is not None
    want = dominant_scores_mean_received(*SiglipBlockAdapter(layer).positioned(*_qk(layer, h)), 8**-0.5)
    assert torch.equal(probe.received, want)
    assert "forward" not in layer.__dict__ and not layer._forward_pre_hooks


def _qk(layer: SiglipEncoderLayer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = layer.layer_norm1(h)
    return layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)


def test_a_tapped_model_refuses_a_second_apply(tiny_llava_ov) -> None:
    pipe = pipeline(
        {"pre_prefill": [{"strategy": "streamingtom_ctr", "tokens_per_frame": 4, "saliency_source": "tower"}]}
    )
    layers = pipe.bind(tiny_llava_ov).target.vit_layers()
    with pipe.apply(tiny_llava_ov):
        assert "forward" in layers[-1].__dict__
        with pytest.raises(TokenCompressError, match="already inside"):
            with pipe.apply(tiny_llava_ov):
                pass
    assert not any("forward" in layer.__dict__ or layer._forward_pre_hooks for layer in layers)
