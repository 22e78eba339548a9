"""VisionZip: reference fixtures (kernels, and a CLIP tower through the real layer probe), docs/design.md §8
properties on the carrier, the LLaVA-OneVision pipeline (moved to the pooled grid), and parameter checks."""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel

from tests.support.fixture_cases import Case, Checker, need, params, parse_tolerance, run_case
from tests.support.models import random_frames
from tokencompress.api.block_adapter import BlockAdapter
from tokencompress.api.errors import BudgetError, CompatibilityError, ConfigError
from tokencompress.api.strategy import ChunkInfo, LayerProbe
from tokencompress.api.tokens import VisualTokens
from tokencompress.api.types import Stage, StageInfo
from tokencompress.patching.block_routing import BlockPatch
from tokencompress.pipeline.pipeline import Pipeline
from tokencompress.plugins import hookimpl
from tokencompress.plugins.registry import Registry
from tokencompress.strategies.visionzip import VisionZip, VisionZipParams
from tokencompress.strategies.visionzip_select import (
    cls_row_from_qk,
    dominant_scores_cls,
    dominant_scores_mean_received,
    mean_received_from_attention,
    select,
    split_heads,
)
from tokencompress.targets.llava.siglip_block import SiglipBlockAdapter
from tokencompress.testing import check_token_strategy, visual_tokens

# tests/fixtures/visionzip/README.md's float tolerance (indices exact), where a sidecar has none
README_TOL = parse_tolerance("`rtol = 1e-5`, `atol = 1e-5`")
CLS_ROW_ATOL = 1e-6  # README: the recomputed CLS row matches the eager one within 3e-7
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INDEX_KEYS = (
    "selected_indices_score_order",
    "dominant_indices",
    "remaining_indices",
    "target_local_indices",
    "target_indices",
    "merge_indices",
    "assignment",
    "member_counts",
)
FLOAT_KEYS = ("dominant_tokens", "contextual_tokens", "output_tokens")


# --------------------------------------------------------------------------------------------- helpers


def _tol(case: Case) -> dict[str, float]:
    """The sidecar's ``tolerance.float_tensors``, each bound falling back to the README's."""
    own = case.meta.get("tolerance", {}).get("float_tensors", {})
    return parse_tolerance({key: own.get(key, value) for key, value in README_TOL.items()})


def check_selection(case: Case, check: Checker, score: Tensor, has_cls: bool) -> None:
    """The kernel on the stored inputs against every stored intermediate."""
    t, budget = check.expected, need(case.meta, "budget")
    k, c = int(need(budget, "dominant")), int(need(budget, "contextual"))
    assert bool(budget.get("dominant_includes_cls", has_cls)) == has_cls, f"{case.name}: CLS flag disagrees"
    assert int(budget.get("topk_k", k - has_cls)) == k - has_cls
    check.close("selection_score", score)
    if "keys" in t:
        check.close("keys_head_mean", t["keys"].mean(dim=1))
        check.used("keys")
    sel = select(t["hidden_states"], t["selection_score"], t["keys_head_mean"], k, c, has_cls)
    for key in INDEX_KEYS:
        check.exact(key, getattr(sel, key))
    for key in FLOAT_KEYS:
        check.close(key, getattr(sel, key))
    check.used("hidden_states", "keys_head_mean")
    assert sel.output_tokens.shape[1] == need(budget, "output_tokens_per_frame")


def check_reference_cls(case: Case) -> dict[str, float]:
    if not need(case.meta, "encoder", "has_cls_token"):
        pytest.fail(f"{case.name}: the reference CLS variant on an encoder without a CLS token")
    t = case.tensors()
    check = Checker(case, t, _tol(case))
    if "attn_weights" in t:  # the stored CLS row is the eager attention's row 0 over the patches
        check.close("cls_attention", t["attn_weights"][:, :, 0, 1:])
        check.used("attn_weights")
    check_selection(case, check, dominant_scores_cls(t["cls_attention"]), has_cls=True)
    check.used("cls_attention")
    if "e2e_model" in case.meta:
        check_clip_tower(case, check)
    return check.done()


def check_no_cls(case: Case) -> dict[str, float]:
    if need(case.meta, "encoder", "has_cls_token"):
        pytest.fail(f"{case.name}: a no-CLS variant on an encoder with a CLS token")
    t = case.tensors()
    check = Checker(case, t, _tol(case))
    check_selection(case, check, mean_received_from_attention(t["attn_weights"]), has_cls=False)
    check.used("attn_weights")
    return check.done()


@torch.no_grad()
def check_clip_tower(case: Case, check: Checker) -> None:
    """Rebuild the encoder with SDPA, capture layer L-2's input with the framework's probe, recompute
    the CLS row and keys from it, and check the kernel's and the strategy's outputs."""
    t = check.expected
    spec = need(case.meta, "e2e_model")
    config = CLIPVisionConfig.from_dict(dict(need(spec, "config")))
    model = CLIPVisionModel._from_config(config, attn_implementation="sdpa")
    weights = load_file(str(case.path.with_name(need(spec, "weights_file"))))
    result = model.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"embeddings.position_ids"}
    model = model.float().eval()

    layers = model.encoder.layers
    n_layers = len(layers)
    ell = n_layers - 2
    assert ell == need(case.meta, "encoder", "selection_layer_index")
    pixels = t["pixel_values"].float()
    info = ChunkInfo(0, 0, pixels.shape[0])
    with BlockPatch(layers, [SiglipBlockAdapter(layer) for layer in layers], [], probe_layers=[ell]) as patch:
        with patch.chunk([], info):
            out = model(pixel_values=pixels, output_hidden_states=True)
    assert set(info.probes) == {ell}
    probe = info.probes[ell]
    torch.testing.assert_close(probe.hidden, out.hidden_states[ell], atol=0, rtol=0)
    hidden = out.hidden_states[-2]  # layer ℓ's output: the tokens VisionZip selects from
    torch.testing.assert_close(hidden, t["hidden_states"], **README_TOL)  # SDPA vs eager: < 7e-6

    adapter = probe.adapter
    x = adapter.ln1(probe.hidden)
    k = split_heads(adapter.k(x), adapter.num_heads)
    q_cls = split_heads(adapter.q(x[:, :1]), adapter.num_heads)[:, :, 0]
    row = cls_row_from_qk(q_cls, k, adapter.head_dim**-0.5)
    torch.testing.assert_close(row, t["cls_attention"], atol=CLS_ROW_ATOL, rtol=0)
    torch.testing.assert_close(k, t["keys"], **README_TOL)
    kbar = k.mean(dim=1)
    score = dominant_scores_cls(row)
    budget = case.meta["budget"]
    kk, c = budget["dominant"], budget["contextual"]
    sel = select(hidden, score, kbar, kk, c, has_cls=True)
    for key in INDEX_KEYS:
        want = t[key]
        assert torch.equal(getattr(sel, key).to(want.dtype), want), f"{case.name}: e2e {key} differs"
    torch.testing.assert_close(sel.output_tokens, t["output_tokens"], **README_TOL)
    check.errors["e2e_output_tokens"] = (sel.output_tokens - t["output_tokens"]).abs().max().item()
    check.errors["e2e_cls_row"] = (row - t["cls_attention"]).abs().max().item()
    check.used("pixel_values")

    # The strategy on the carrier (patches only, no CLS row): with dominant = K-1 it keeps the same
    # patches and merges the same remaining set, so its rows are the reference's minus CLS, in
    # raster order of their representative positions.
    grid = tuple(case.meta["encoder"]["grid"])
    tokens = VisualTokens.from_frames(hidden[:, 1:], grid)
    chunk = ChunkInfo(0, 0, pixels.shape[0], probes={ell: probe})
    got = VisionZip(dominant=kk - 1, contextual=c, layer=ell).apply(tokens, None, chunk)
    for f in range(pixels.shape[0]):
        pos = torch.cat([t["dominant_indices"][f, 1:], t["target_indices"][f]]) - 1
        rows = t["output_tokens"][f, 1:]
        order = torch.argsort(pos)
        mine = got.frame == f
        assert torch.equal(got.local_index()[mine], pos[order]), f"{case.name}: frame {f} positions"
        torch.testing.assert_close(got.tokens[mine], rows[order], **README_TOL)
        sizes = torch.cat([torch.ones(kk - 1), t["member_counts"][f].float() + 1])[order]
        assert torch.equal(got.sizes[mine], sizes)


VARIANTS: dict[str, Callable[[Case], dict[str, float]]] = {
    "reference_cls": check_reference_cls,
    "no_cls_mean_received": check_no_cls,
}


@pytest.mark.parametrize("case", params("visionzip"))
def test_visionzip_fixture(case: Case) -> None:
    run_case(case, case.meta.get("variant"), VARIANTS, "VisionZip fixture variant")


def test_an_unreadable_fixture_fails(tmp_path) -> None:
    with pytest.raises(pytest.fail.Exception, match="unknown VisionZip fixture variant"):
        test_visionzip_fixture(Case(tmp_path / "mystery.json", {"variant": "cls_v2"}))
    with pytest.raises(pytest.fail.Exception, match="lacks 'encoder.has_cls_token'"):
        check_no_cls(Case(tmp_path / "x.json", {}))


# ------------------------------------------------------------------------------------------- kernels


@PROPS
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 4),
    n=st.integers(1, 40),
    block=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_mean_received_equals_the_materialised_attention(b, h, n, block, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, n, 8, generator=gen) * 2, torch.randn(b, h, n, 8, generator=gen)
    attn = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1)
    got = dominant_scores_mean_received(q, k, 8**-0.5, chunk_size=block)
    torch.testing.assert_close(got, mean_received_from_attention(attn), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(b), atol=1e-5, rtol=0)  # rows are distributions


def test_cls_row_is_row_zero_of_the_full_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 9, 4, generator=gen), torch.randn(2, 3, 9, 4, generator=gen)
    attn = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)
    torch.testing.assert_close(cls_row_from_qk(q[:, :, 0], k, 0.5), attn[:, :, 0, 1:], atol=1e-7, rtol=0)
    assert torch.equal(cls_row_from_qk(q, k, 0.5), cls_row_from_qk(q[:, :, 0], k, 0.5))


def _inputs(b: int, n: int, d: int = 5, dh: int = 3, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, n, d, generator=gen),
        torch.rand(b, n, generator=gen),
        torch.randn(b, n, dh, generator=gen),
    )


def test_contextual_zero_keeps_only_the_dominant_tokens() -> None:
    x, s, kbar = _inputs(2, 10)
    sel = select(x, s[:, 1:], kbar, 4, 0, has_cls=True)
    assert sel.output_tokens.shape == (2, 4, 5) and sel.contextual_tokens.shape == (2, 0, 5)
    assert torch.equal(sel.output_tokens, sel.dominant_tokens) and bool(
        (sel.dominant_indices[:, 0] == 0).all()
    )
    assert sel.remaining_indices.shape == (2, 6) and sel.merge_indices.shape == (2, 0)


def test_budgets_the_reference_mishandles_are_refused() -> None:
    x, s, kbar = _inputs(1, 10)
    with pytest.raises(ValueError, match=r"contextual = 3 .* dominant = 8"):
        select(x, s, kbar, 8, 3, has_cls=False)  # R = 2 < C: the reference crashes
    with pytest.raises(ValueError, match=r"contextual = 4 .* dominant = 9"):
        select(x, s[:, 1:], kbar, 9, 4, has_cls=True)  # R = 1 < C: the reference duplicates the token
    with pytest.raises(ValueError, match=r"dominant = 12 .*\(top-k of dominant - 1 > P\)"):
        select(x, s[:, 1:], kbar, 12, 0, has_cls=True)
    with pytest.raises(ValueError, match="at least 1 dominant"):
        select(x, s, kbar, 0, 2, has_cls=False)


def test_remaining_equal_to_contextual_merges_nothing() -> None:
    x, s, kbar = _inputs(2, 10)
    sel = select(x, s, kbar, 6, 4, has_cls=False)
    assert sel.merge_indices.shape == (2, 0) and torch.equal(sel.target_indices, sel.remaining_indices)
    assert torch.equal(
        sel.contextual_tokens, torch.gather(x, 1, sel.remaining_indices[..., None].expand(-1, -1, 5))
    )


def test_cls_only_dominant_budget() -> None:
    x, s, kbar = _inputs(1, 10)
    sel = select(x, s[:, 1:], kbar, 1, 3, has_cls=True)
    assert sel.dominant_indices.tolist() == [[0]] and sel.target_indices.tolist() == [[1, 4, 7]]


def test_ties_go_to_the_lowest_index_and_zero_keys_do_not_make_nan() -> None:
    x = torch.randn(1, 8, 4)
    sel = select(x, torch.ones(1, 8), torch.zeros(1, 8, 3), 3, 2, has_cls=False)
    assert sel.selected_indices_score_order.tolist() == [[0, 1, 2]]
    assert sel.assignment.tolist() == [[0, 0, 0]]  # all similarities 0: the first target wins
    assert torch.isfinite(sel.output_tokens).all()


def test_mean_merge_is_the_true_mean_of_target_and_members() -> None:
    x, s, kbar = _inputs(2, 12)
    ref, mean = (select(x, s, kbar, 4, 3, has_cls=False, merge=m) for m in ("reference", "mean"))
    assert torch.equal(ref.assignment, mean.assignment)
    for b in range(2):
        for j in range(3):
            members = ref.merge_indices[b][ref.assignment[b] == j]
            group = torch.cat([ref.target_indices[b, j : j + 1], members])
            torch.testing.assert_close(mean.contextual_tokens[b, j], x[b, group].mean(0))
            extra = x[b, members].mean(0) if members.numel() else torch.zeros(5)
            torch.testing.assert_close(ref.contextual_tokens[b, j], x[b, ref.target_indices[b, j]] + extra)


@st.composite
def kernel_inputs(draw: st.DrawFn) -> dict:
    """A batch with ties: scores and keys sometimes on a coarse grid or copied between tokens."""
    b, n, has_cls = draw(st.integers(1, 3)), draw(st.integers(2, 30)), draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(b, n, 4, generator=gen)
    score = torch.rand(b, n - has_cls, generator=gen)
    kbar = torch.randn(b, n, 3, generator=gen)
    if draw(st.booleans()):
        score, kbar = torch.round(score * 3), torch.round(kbar)
    dominant = draw(st.integers(1, n))
    contextual = draw(st.integers(0, n - dominant))
    return dict(x=x, score=score, kbar=kbar, dominant=dominant, contextual=contextual, has_cls=has_cls)


@PROPS
@given(inp=kernel_inputs())
def test_kernel_partitions_every_frame_and_frames_never_mix(inp: dict) -> None:
    sel = select(**inp)
    b, n, _ = inp["x"].shape
    k, c = inp["dominant"], inp["contextual"]
    assert sel.output_tokens.shape == (b, k + c, 4)
    assert torch.equal(
        sel.dominant_tokens, torch.gather(inp["x"], 1, sel.dominant_indices[..., None].expand(-1, -1, 4))
    )
    for f in range(b):
        parts = [sel.dominant_indices[f], sel.target_indices[f], sel.merge_indices[f]]
        covered = torch.sort(torch.cat(parts)).values
        assert torch.equal(covered, torch.arange(n)) if c else len(set(covered.tolist())) == k
        assert sel.member_counts[f].sum() == sel.merge_indices.shape[1] if c else True
        one = select(
            **{
                **inp,
                "x": inp["x"][f : f + 1],
                "score": inp["score"][f : f + 1],
                "kbar": inp["kbar"][f : f + 1],
            }
        )
        for key in INDEX_KEYS:
            want = getattr(sel, key)
            assert torch.equal(
                getattr(one, key), want if key == "target_local_indices" else want[f : f + 1]
            ), key
        torch.testing.assert_close(one.output_tokens[0], sel.output_tokens[f], atol=1e-6, rtol=1e-6)
    again = select(**inp)
    assert all(torch.equal(getattr(again, key), getattr(sel, key)) for key in INDEX_KEYS + FLOAT_KEYS)


# ----------------------------------------------------------------- the carrier (docs/design.md §8)


class RandomAdapter(BlockAdapter):
    """An attention layer with seeded q/k projections; only ln1/q/k are read by VisionZip."""

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 3, seed: int = 0) -> None:
        super().__init__(torch.nn.Identity(), heads, head_dim)
        gen = torch.Generator().manual_seed(seed)
        self.wq = torch.randn(dim, heads * head_dim, generator=gen)
        self.wk = torch.randn(dim, heads * head_dim, generator=gen)

    def ln1(self, x: Tensor) -> Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) if x.shape[-1] > 1 else x

    def q(self, x: Tensor) -> Tensor:
        return x @ self.wq

    def k(self, x: Tensor) -> Tensor:
        return x @ self.wk

    def v(self, x: Tensor) -> Tensor:
        return x

    def attention(self, q, k, v, q_index=None, key_bias=None):  # pragma: no cover - unused
        raise NotImplementedError

    def out(self, o: Tensor) -> Tensor:  # pragma: no cover - unused
        return o

    def ln2(self, x: Tensor) -> Tensor:  # pragma: no cover - unused
        return x

    def mlp(self, x: Tensor) -> Tensor:  # pragma: no cover - unused
        return x


class SelfProbed(VisionZip):
    """VisionZip whose layer probe is the chunk's own tokens, so the generic conformance check
    (which builds bare ``ChunkInfo``s) can drive it."""

    def apply(self, tokens: VisualTokens, state: Any, chunk: ChunkInfo) -> VisualTokens:
        probe = LayerProbe(tokens.dense(), RandomAdapter(tokens.dim))
        return super().apply(tokens, state, replace(chunk, probes={0: probe}))


@PROPS
@given(
    tokens=visual_tokens(),
    dominant=st.integers(1, 40),
    contextual=st.integers(0, 12),
    merge=st.sampled_from(["reference", "mean"]),
)
def test_carrier_invariants(tokens: VisualTokens, dominant: int, contextual: int, merge: str) -> None:
    """docs/design.md §8 through the shared conformance check, plus the merging invariants."""
    vz = SelfProbed(dominant=dominant, contextual=contextual, layer=0, merge=merge)
    outs = check_token_strategy(vz, tokens, chunks=2)
    t, f = tokens.tokens_per_frame_in, tokens.num_frames
    k, c = vz.per_frame(t)
    out = outs[0]
    assert out.count == vz.planned_count(t, f) == (k + c) * f
    assert torch.equal(out.counts(), torch.full((f,), k + c))
    if c:  # merging: every original token lives in exactly one output row
        assert bool((out.assign >= 0).all())
        assert out.sizes.sum() == tokens.count
    else:  # pruning: the leftovers are dropped
        assert int((out.assign >= 0).sum()) == out.sizes.sum() == k * f
    # dominant rows (and targets nobody joined) are bit-equal copies
    single = out.sizes == 1
    assert torch.equal(out.tokens[single], tokens.tokens[out.source[single]])


@PROPS
@given(
    tokens=visual_tokens(frames=st.integers(2, 3), grid=st.tuples(st.integers(2, 5), st.integers(2, 5))),
    seed=st.integers(0, 999),
)
def test_ragged_frames_are_handled_one_by_one(tokens: VisualTokens, seed: int) -> None:
    """After an earlier pruner frames hold different counts; each is selected alone, budgets clamped."""
    gen = torch.Generator().manual_seed(seed)
    t = tokens.tokens_per_frame_in
    keep = torch.cat(
        [
            torch.sort(
                torch.randperm(t, generator=gen)[: int(torch.randint(1, t + 1, (1,), generator=gen))]
            ).values
            + i * t
            for i in range(tokens.num_frames)
        ]
    )
    pruned = tokens.take(keep)
    probe = LayerProbe(tokens.dense(), RandomAdapter(tokens.dim, seed=seed))
    chunk = ChunkInfo(0, 0, tokens.num_frames, probes={3: probe})
    vz = VisionZip(dominant=3, contextual=2, layer=3)
    out = vz.apply(pruned, None, chunk)
    for f, n in enumerate(pruned.counts().tolist()):
        assert int(out.counts()[f]) == sum(vz.per_frame(n))
        # the same frame alone (its rows only) gives the same rows
        alone = pruned.take(torch.nonzero(pruned.frame == f).squeeze(1))
        single = vz.apply(alone, None, chunk)
        mine = out.frame == f
        assert torch.equal(single.source, out.source[mine]) and torch.equal(single.sizes, out.sizes[mine])
        torch.testing.assert_close(single.tokens, out.tokens[mine], atol=0, rtol=0)
    assert torch.equal(out.sizes.sum(), (out.assign >= 0).sum().to(out.sizes.dtype))


# ----------------------------------------------------------------------- the LLaVA-OV pipeline


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    if "visionzip" in reg.strategies:  # the lead registers it in builtin.py
        return reg
    plugin = types.ModuleType("tokencompress_visionzip_test")

    @hookimpl
    def tokencompress_register_strategies(registrar) -> None:
        registrar.add_strategy(VisionZip)

    plugin.tokencompress_register_strategies = tokencompress_register_strategies  # type: ignore[attr-defined]
    return Registry(plugins=[plugin])


def _pipe(registry: Registry, fpc: int = 2, **step: Any) -> Pipeline:
    step = {"strategy": "visionzip", "dominant": 4, "contextual": 2, **step}
    return Pipeline.from_dict({"stream": {"frames_per_chunk": fpc}, "stages": {"post_vit": [step]}}, registry)


@torch.no_grad()
def test_llava_onevision_moves_to_the_pooled_grid(tiny_llava_ov, registry) -> None:
    frames = random_frames(5, seed=3)
    with _pipe(registry).apply(tiny_llava_ov) as bound:
        assert bound.notes == ["visionzip (post_vit) runs on target llava_onevision's pre_prefill grid"]
        assert bound.by_stage[Stage.PRE_PREFILL] and not bound.by_stage[Stage.POST_VIT]
        assert bound.planned_tokens(Stage.PRE_PREFILL, 2) == 12
        stream = bound.stream()
        stream.prefill_ids(torch.tensor([11, 12, 13]))
        stats = stream.add_frames(frames) + stream.flush()
        answer = stream.ask(torch.tensor([21, 22]), max_new_tokens=2)
    assert [s.frames for s in stats] == [2, 2, 1]
    assert [s.pre_prefill for s in stats] == [(32, 12), (32, 12), (16, 6)]
    assert [s.post_vit for s in stats] == [(128, 128), (128, 128), (64, 64)]
    assert stream.llm.visual_tokens == 6 * 5 and torch.isfinite(answer.first_logits).all()


@torch.no_grad()
def test_llava_onevision_result_is_the_kernel_on_pooled_maps(tiny_llava_ov, registry) -> None:
    """The wiring: probe of the last layer → mean-received scores and keys on the 8×8 grid → the
    target's bilinear pooling → the kernel on the pooled, projected tokens."""
    frames = random_frames(2, seed=5)
    with _pipe(registry, placement="after_pool").apply(tiny_llava_ov) as bound:
        got = bound.stream().encode_only(frames)
        target = bound.target
    inner = tiny_llava_ov.model
    pixels = target.preprocess(frames)
    out = inner.vision_tower(pixels, output_hidden_states=True)
    adapter = SiglipBlockAdapter(inner.vision_tower.encoder.layers[-1])
    x = adapter.ln1(out.hidden_states[-2])  # the last layer's input
    q, k = (split_heads(p(x), adapter.num_heads) for p in (adapter.q, adapter.k))
    maps = torch.cat([dominant_scores_mean_received(q, k, adapter.head_dim**-0.5)[..., None], k.mean(1)], -1)
    pooled_maps = target.prefill_grid_map()(maps)
    pooled = inner.apply_pooling(inner.multi_modal_projector(out.hidden_states[-1]))
    sel = select(pooled, pooled_maps[..., 0], pooled_maps[..., 1:], 4, 2, has_cls=False)
    for f in range(2):
        pos = torch.cat([sel.dominant_indices[f], sel.target_indices[f]])
        order = torch.argsort(pos)
        mine = got.frame == f
        assert torch.equal(got.local_index()[mine], pos[order])
        torch.testing.assert_close(got.tokens[mine], sel.output_tokens[f][order], atol=1e-5, rtol=1e-5)


def test_before_pool_is_refused_on_llava_onevision(tiny_llava_ov, registry) -> None:
    with pytest.raises(CompatibilityError) as err:
        _pipe(registry, placement="before_pool").bind(tiny_llava_ov)
    msg = str(err.value)
    assert "stages.post_vit[0]" in msg and "'visionzip'" in msg and "'llava_onevision'" in msg
    assert re.search(r"at post_vit", msg) and re.search(r"changes the token count|cannot provide", msg)


def test_build_time_refusals_name_the_fields(tiny_llava_ov, registry) -> None:
    with pytest.raises(
        BudgetError, match=r"visionzip\.dominant \+ visionzip\.contextual = 12 \+ 5 = 17 .* 16 tokens"
    ):
        _pipe(registry, dominant=12, contextual=5).bind(tiny_llava_ov)
    with pytest.raises(BudgetError, match=r"visionzip\.dominant = 17 .* 16 tokens .* pre_prefill"):
        _pipe(registry, dominant=17, contextual=0).bind(tiny_llava_ov)
    with pytest.raises(CompatibilityError, match="cls_token"):
        _pipe(registry, score="cls").bind(tiny_llava_ov)  # SigLIP has no CLS token
    with pytest.raises(CompatibilityError, match=r"visionzip\.layer = 5 .* 2 encoder layers"):
        _pipe(registry, layer=5).bind(tiny_llava_ov)
    _pipe(registry, dominant=12, contextual=4).bind(tiny_llava_ov)  # the whole frame is fine


# ------------------------------------------------------------------------------------ parameters


def test_params_and_declarations() -> None:
    vz = VisionZip()
    assert (vz.params.dominant, vz.params.contextual, vz.params.layer) == (42, 7, -1)
    assert VisionZip.name == "visionzip" and VisionZip.stage is Stage.POST_VIT
    assert {n.value for n in vz.needs} == {"attention", "keys"}
    assert {n.value for n in VisionZip(score="cls").needs} == {"attention", "keys", "cls_token"}
    assert (
        vz.planned_count(196, 3) == 49 * 3 and vz.planned_count(45, 2) == 90 and vz.planned_count(30, 1) == 30
    )
    assert vz.probe_layers(26) == (25,) and VisionZip(layer=-2).probe_layers(24) == (22,)
    locked = StageInfo(Stage.POST_VIT, 729, 8, (27, 27), count_locked=True)
    free = replace(locked, count_locked=False)
    assert vz.effective_stage({Stage.POST_VIT: locked}) is Stage.PRE_PREFILL
    assert vz.effective_stage({Stage.POST_VIT: free}) is Stage.POST_VIT
    assert VisionZip(placement="after_pool").effective_stage({Stage.POST_VIT: free}) is Stage.PRE_PREFILL
    assert VisionZip(placement="before_pool").effective_stage({Stage.POST_VIT: locked}) is Stage.POST_VIT
    assert VisionZipParams.model_validate(vz.params.model_dump(mode="json")) == vz.params
    assert VisionZip.conformance_params(replace(locked, tokens_per_frame=729)) == {
        "dominant": 42,
        "contextual": 7,
    }
    assert VisionZip.conformance_params(replace(locked, tokens_per_frame=64)) == {
        "dominant": 3,
        "contextual": 1,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dominant": 0},
        {"contextual": -1},
        {"score": "attention"},
        {"merge": "avg"},
        {"placement": "pooled"},
        {"topk": 3},
    ],
)
def test_bad_params_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        VisionZip(**kwargs)


def test_yaml_typo_names_the_path(registry) -> None:
    with pytest.raises(ConfigError, match=r"stages\.post_vit\[0\]"):
        _pipe(registry, dominat=4)


def test_missing_probe_is_a_clear_error() -> None:
    tokens = VisualTokens.from_frames(torch.randn(1, 4, 3), (2, 2))
    with pytest.raises(RuntimeError, match="no encoder-layer probe"):
        VisionZip(dominant=1, contextual=1).apply(tokens, None, ChunkInfo(0, 0, 1))
