"""StreamingTOM CTR with ``saliency_source: tower``: the probed layer's own pass yields the saliency.

Checked: on the saliency fixtures (the reference's importance and attention output within the
case's tolerances, the same pooled saliency and kept tokens as ``recompute``), and on every
built-in target (the tower's saliency equals the recompute's for the same layer input, the kept
tokens of whole streams are the same, the tapped layer and the whole tower equal the stock ones
within float tolerance), plus the fallback when a block strategy computes the tapped layer.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.strategies.test_streamingtom_ctr import METHOD, SALIENCY, _pooling_target, _saliency_layer, _tol
from tests.support.fixture_cases import Case, Checker, need, params
from tests.support.pipelines import STC, pipeline
from tokencompress import Registry
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import ChunkInfo, LayerProbe, Stage
from tokencompress.patching.block_routing import BlockPatch
from tokencompress.strategies.streamingtom_ctr import StreamingTomCtr
from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter
from tokencompress.testing import moving_frames

SALIENCY_TOL = {"atol": 1e-9, "rtol": 1e-5}
"""Tower saliency against recompute saliency for the same layer input. Both form the logits with
the same operations (query blocks may differ: float32 rounding of the products only)."""
LAYER_TOL = {"atol": 1e-5, "rtol": 1e-5}
"""The tapped layer (explicit float32 softmax) and the tower built on it against the stock ones
(fused SDPA); observed ≤ 3e-8 on the tiny models."""

TARGETS = ["llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
CASES = [(t, -2 if t == "llava_next_video" else -1) for t in TARGETS] + [("qwen2_5_vl", 0)]
"""(target, layer): each target's saliency layer (LLaVA-NeXT-Video's feature layer is -2), and a
windowed layer of Qwen2.5-VL's tower (its tiny model's full-attention layers are 1 and 3)."""
_MODELS: dict[str, nn.Module] = {}
FRAMES = moving_frames(4, seed=7)


def _tiny(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = Registry().target(name).tiny_model()
    return _MODELS[name]


def _ctr(source: str, layer: int = -1, g: int = 2) -> dict[str, Any]:
    return {"strategy": "streamingtom_ctr", "tokens_per_frame": g, "layer": layer, "saliency_source": source}


# ------------------------------------------------------------------ fixtures
@torch.no_grad()
def _check_tower_saliency(case: Case) -> dict[str, float]:
    t = case.tensors()
    p = need(case.meta, "params", where=case.name)
    h = t["hidden_states"]
    side, heads = need(p, "grid", where=case.name)[0], int(need(p, "num_heads", where=case.name))
    check = Checker(case, t, {"atol": 0.0, "rtol": 0.0})
    check.used("hidden_states", "features_grid", "pooled_features")
    check.used(*[f"{n}_proj.{w}" for n in ("q", "k", "v", "out") for w in ("weight", "bias")])
    layer = _saliency_layer(t, heads)
    layer.mlp = _Zero()  # layer output - input = the attention output (layer_norm1 is the identity)
    stock = layer(h, None)
    patch = BlockPatch([layer], [SiglipBlockAdapter(layer)], [], probe_layers=[0], tap_layers=[0])
    info = ChunkInfo(0, 0, h.shape[0], to_prefill_grid=_pooling_target(side).prefill_grid_map())
    with patch, patch.chunk([], info):
        out = layer(h, None)
    assert "forward" not in layer.__dict__, case.name
    check.close("attn_output", out - h, **_tol(case, "attn_output"))
    torch.testing.assert_close(out, stock, **LAYER_TOL)
    tower, recompute = StreamingTomCtr(saliency_source="tower"), StreamingTomCtr()
    probe = info.probes[0]
    assert probe.received is not None, case.name
    check.close("importance", tower.vit_saliency(probe, side * side), **_tol(case, "importance"))
    torch.testing.assert_close(probe.received, recompute.vit_saliency(probe, side * side), **SALIENCY_TOL)
    pooled = need(p, "pooled_grid", where=case.name)
    tok = VisualTokens.from_frames(info.to_prefill_grid(t["features_grid"]), tuple(pooled))
    got, want = tower.saliency(tok, info), recompute.saliency(tok, info)
    check.close("pooled_scores", got, **_tol(case, "pooled_scores"))
    torch.testing.assert_close(got, want, **SALIENCY_TOL)
    # CTR's defaults on the case's pooled frames: the same kept tokens from either source
    a, b = (s.plan(tok, sal, s.new_state()) for s, sal in ((tower, got), (recompute, want)))
    assert torch.equal(a.kept_positions, b.kept_positions), case.name
    assert torch.equal(a.from_static, b.from_static) and torch.equal(a.static_mask, b.static_mask)
    return check.done()


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("case", params(METHOD, {SALIENCY}))
def test_tower_saliency_fixture(case: Case) -> None:
    errors = _check_tower_saliency(case)
    print(f"{case.name} (tower) max abs errors: " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))


# ------------------------------------------------------------ on the models
def _run(model: nn.Module, stages: dict, spy: bool = False) -> tuple[list, list[LayerProbe], list]:
    """Two 2-frame chunks of ``FRAMES``: the carriers, the CTR probes seen, the tapped layer's calls."""
    probes: list[LayerProbe] = []
    calls: list = []
    with pipeline(stages, fpc=2).apply(model) as bound:
        ctr = next((s for s in bound.steps if isinstance(s, StreamingTomCtr)), None)
        hooks = []
        if ctr is not None:
            original = ctr.saliency

            def saliency(tokens: VisualTokens, chunk: ChunkInfo) -> torch.Tensor:
                probes.append(ctr._probe(chunk))
                return original(tokens, chunk)

            ctr.saliency = saliency  # type: ignore[method-assign]
            if spy:
                n = len(bound.target.vit_layers())
                layer = bound.target.vit_layers()[ctr.resolve_layer(n)]
                hooks.append(
                    layer.register_forward_hook(
                        lambda _m, args, kwargs, out: calls.append((layer, args, kwargs, out.clone())),
                        with_kwargs=True,
                    )
                )
        s = bound.stream()
        out = [s.encode_only(FRAMES[:2]), s.encode_only(FRAMES[2:])]
        for hook in hooks:
            hook.remove()
        layers = bound.target.vit_layers()
    assert not any("forward" in layer.__dict__ or layer._forward_pre_hooks for layer in layers)
    return out, probes, calls


@pytest.mark.parametrize(("target", "layer"), CASES, ids=[f"{t}-layer{i}" for t, i in CASES])
@torch.no_grad()
def test_tower_saliency_equals_recompute_and_keeps_the_same_tokens(target: str, layer: int) -> None:
    model = _tiny(target)
    rec, rec_probes, _ = _run(model, {"pre_prefill": [_ctr("recompute", layer)]})
    tow, tow_probes, calls = _run(model, {"pre_prefill": [_ctr("tower", layer)]}, spy=True)
    assert all(p.received is None for p in rec_probes) and len(tow_probes) == 2
    recompute = StreamingTomCtr(layer=layer)
    for probe in tow_probes:
        grid = rec[0].tokens_per_frame_in
        assert probe.received is not None
        torch.testing.assert_close(
            StreamingTomCtr(layer=layer, saliency_source="tower").vit_saliency(probe, grid),
            recompute.vit_saliency(probe, grid),
            **SALIENCY_TOL,
        )
    for a, b in zip(rec, tow, strict=True):
        assert torch.equal(a.source, b.source) and torch.equal(a.sizes, b.sizes)
        torch.testing.assert_close(a.tokens, b.tokens, **LAYER_TOL)
    # the tapped layer against the stock layer on the same call (the model is restored by now)
    assert len(calls) == 2
    for module, args, kwargs, out in calls:
        torch.testing.assert_close(out, module(*args, **kwargs), **LAYER_TOL)


@pytest.mark.parametrize("target", TARGETS)
@torch.no_grad()
def test_the_tapped_tower_equals_the_stock_tower(target: str) -> None:
    """CTR keeping every token (nothing merged, nothing dropped) on the tapped tower gives the plain
    model's tokens (Qwen3-VL: with its DeepStack features) within float tolerance."""
    model = _tiny(target)
    n = pipeline({}).bind(model).target.stage_info()[Stage.PRE_PREFILL].tokens_per_frame
    layer = -2 if target == "llava_next_video" else -1
    plain, _, _ = _run(model, {})
    full, probes, _ = _run(model, {"pre_prefill": [_ctr("tower", layer, g=n)]})
    assert all(p.received is not None for p in probes)
    for a, b in zip(plain, full, strict=True):
        assert torch.equal(a.source, b.source)
        torch.testing.assert_close(b.tokens, a.tokens, **LAYER_TOL)
        if hasattr(a, "deepstack"):
            for x, y in zip(a.deepstack, b.deepstack, strict=True):
                torch.testing.assert_close(y, x, **LAYER_TOL)


@torch.no_grad()
def test_a_block_strategy_computing_the_layer_falls_back_to_recompute(tiny_llava_ov) -> None:
    """STC-Cacher computes every layer itself (it never runs the layer beneath it): the tap does not
    run, the saliency is recomputed from the probed input, and the tokens equal the recompute one's."""
    cacher = STC["pre_vit_block"]
    rec, _, _ = _run(tiny_llava_ov, {"pre_vit_block": cacher, "pre_prefill": [_ctr("recompute")]})
    tow, probes, _ = _run(tiny_llava_ov, {"pre_vit_block": cacher, "pre_prefill": [_ctr("tower")]})
    assert [p.received is not None for p in probes] == [False, False]
    for a, b in zip(rec, tow, strict=True):
        assert torch.equal(a.source, b.source)
        torch.testing.assert_close(a.tokens, b.tokens, **LAYER_TOL)
