"""ToMe and VisionZip on the Qwen2-VL / Qwen2.5-VL towers (rotary, packed slices, windows, 2×2 merger).

References are the models' own code: the block's ``attn`` module on a packed sequence built
from the call's raw ``cu_seqlens`` and rotary tables (for placed tokens), transformers'
``apply_rotary_pos_emb_vision`` with per-segment softmax (for VisionZip's scores), and the stock
forward of the whole model (for keep-all).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.models import random_frames
from tests.targets.test_qwen_vl import (
    FRAMES,
    IDS,
    SMALL,
    TARGETS,
    pipeline,
    plain_logits,
    plain_positions,
    stream_answer,
    tiny,
)
from tokencompress import CompatibilityError, Pipeline
from tokencompress.api.strategy import LayerProbe
from tokencompress.strategies.tome import ToMeState
from tokencompress.strategies.tome_merge import match_bipartite, merge_wavg
from tokencompress.strategies.visionzip import VisionZip
from tokencompress.strategies.visionzip_select import select
from tokencompress.targets.qwen.qwen2_vl import Qwen2_5_VLTarget

pytestmark = pytest.mark.slow


@contextmanager
def block_calls(target, model, frames):
    """Every vision block's call ``(block, args, kwargs)`` for ``frames``, with the chunk layout
    published (so adapters can be bound) while the caller works."""
    pixels = target.preprocess(frames)
    grid = target.grid_thw(pixels)
    layout = target.chunk_layout(grid)
    calls = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True)
        for layer in target.vit_layers()
    ]
    try:
        with torch.inference_mode(), target.using_layout(layout):
            model.model.visual(pixels, grid_thw=grid)
            for h in hooks:
                h.remove()
            yield calls, layout
    finally:
        for h in hooks:
            h.remove()


def _packed_index(layout, n_tokens):
    """``[F, T]``: packed index of every frames-order token."""
    order = layout.order if layout.order is not None else torch.arange(n_tokens)
    return order.view(layout.grid[0], layout.slice_tokens)


def _segment_of(cu, packed):
    return torch.searchsorted(cu[1:], packed, right=True)


def _stock_attention_on_subset(block, cu, cos, sin, x, packed, repeats):
    """The block's own ``attn`` on a packed sequence of the chosen tokens only.

    ``x`` ``[F, n, C]`` normed inputs standing at packed positions ``packed`` ``[F, n]``; token
    ``(f, i)`` is repeated ``repeats[f, i]`` times (proportional attention with integer sizes is
    attention over duplicated keys), grouped by the attention segment (slice or window) its
    position lies in, with its position's rotary row. Returns ``[F, n, C]`` (first copies)."""
    f, n, c = x.shape
    seg = _segment_of(cu, packed)
    flat, lengths = [], []
    for s in torch.unique(seg).tolist():
        members = [(fi, i) for fi, i in (seg == s).nonzero().tolist() for _ in range(int(repeats[fi, i]))]
        flat += members
        lengths.append(len(members))
    fi = torch.tensor([r[0] for r in flat])
    ii = torch.tensor([r[1] for r in flat])
    first = torch.empty(f, n, dtype=torch.long)
    for k in range(len(flat) - 1, -1, -1):  # the lowest row of each token's copies
        first[fi[k], ii[k]] = k
    p = packed[fi, ii]
    cu_sub = torch.cumsum(torch.tensor([0, *lengths]), 0).to(torch.int32)
    out = block.attn(x[fi, ii], cu_seqlens=cu_sub, position_embeddings=(cos[p], sin[p]))
    return out[first.view(-1)].view(f, n, c)


# ------------------------------------------------------------------ placed attention
@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_placed_tokens_attend_as_the_stock_block_on_those_tokens(target_cls):
    """``adapter.at(positions)``: a token subset at chosen positions (any order) attends exactly as
    the stock attention module run on just those tokens with those positions' rotary rows, per
    temporal slice (and per window in windowed blocks); ``key_bias = log(size)`` equals the stock
    attention over keys duplicated ``size`` times."""
    model = tiny(target_cls)
    target = target_cls(model, target_cls.Options(**SMALL))
    gen = torch.Generator().manual_seed(0)
    with block_calls(target, model, FRAMES[:4]) as (calls, layout):
        for block, args, kwargs in calls:
            rest = args[1:]
            a = target.block_adapter(block).bind(rest, kwargs)
            cu = rest[0] if rest else kwargs["cu_seqlens"]
            cos, sin = kwargs["position_embeddings"]
            h = a.to_frames(args[0])  # [2, 64, C]
            f, t, _ = h.shape
            packed_all = _packed_index(layout, f * t)
            for n in (9, 64):
                pos = torch.stack([torch.randperm(t, generator=gen)[:n] for _ in range(f)])
                x = torch.gather(a.ln1(h), 1, pos[..., None].expand(-1, -1, h.shape[-1]))
                placed = a.at(pos)
                q, k, v = a.q(x), a.k(x), a.v(x)
                packed = torch.gather(packed_all, 1, pos)
                ones = torch.ones(f, n, dtype=torch.long)
                want = _stock_attention_on_subset(block, cu, cos, sin, x, packed, ones)
                torch.testing.assert_close(a.out(placed.attention(q, k, v)), want, atol=2e-6, rtol=1e-5)
                sizes = torch.randint(1, 4, (f, n), generator=gen)
                want = _stock_attention_on_subset(block, cu, cos, sin, x, packed, sizes)
                got = a.out(placed.attention(q, k, v, key_bias=sizes.float().log()))
                torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
                # a query subset of placed tokens (q_index indexes the placed tokens)
                sub = torch.stack([torch.randperm(n, generator=gen)[: max(1, n // 3)] for _ in range(f)])
                xq = torch.gather(x, 1, sub[..., None].expand(-1, -1, x.shape[-1]))
                part = placed.attention(a.q(xq), k, v, q_index=sub)
                full = placed.attention(q, k, v)
                rows = torch.gather(full, 1, sub[..., None].expand(-1, -1, full.shape[-1]))
                torch.testing.assert_close(part, rows, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- ToMe
def _tome_stream(model, stages, frames, fpc=4):
    with pipeline(stages, fpc=fpc).apply(model) as bound:
        s = bound.stream()
        state = s.states[0] if s.states else None
        if isinstance(state, ToMeState):
            state.trace = []
        tokens = s.encode_only(frames)
        return tokens, state, bound


_PLAIN: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
KEEP_FRAMES = FRAMES[:4]


def plain_reference(target_cls):
    """(first logits of a strategy-free stream, the stock model's one-shot logits), 2-frame chunks."""
    if target_cls.name not in _PLAIN:
        model = tiny(target_cls)
        answer, _ = stream_answer(model, pipeline(fpc=2), KEEP_FRAMES)
        target = pipeline().bind(model).target
        _PLAIN[target_cls.name] = (answer.first_logits, plain_logits(model, target, KEEP_FRAMES, fpc=2))
    return _PLAIN[target_cls.name]


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_tome_merge_nothing_equals_the_plain_model(target_cls):
    """r = 0: every layer runs through the adapter (rotary, windows) and still equals the stock tower
    (Qwen2-VL bit for bit; Qwen2.5-VL within 1e-6, block order instead of window order) and the
    plain model's logits (1e-4, the tolerance of the other keep-all checks). r = 16 merges (the
    logits move) and the merger still gets the full grid (16 tokens per slice)."""
    model = tiny(target_cls)
    plain, _, _ = _tome_stream(model, {}, KEEP_FRAMES)
    none, state, _ = _tome_stream(model, {"pre_vit_block": [{"strategy": "tome", "r": 0}]}, KEEP_FRAMES)
    assert state.owner is None and all(t.r == 0 for t in state.trace)  # traced, nothing merged
    if target_cls is Qwen2_5_VLTarget:
        torch.testing.assert_close(none.tokens, plain.tokens, atol=1e-6, rtol=0)
    else:
        assert torch.equal(none.tokens, plain.tokens)
    stream_logits, model_logits = plain_reference(target_cls)
    answer, _ = stream_answer(
        model, pipeline({"pre_vit_block": [{"strategy": "tome", "r": 0}]}, fpc=2), KEEP_FRAMES
    )
    torch.testing.assert_close(answer.first_logits, model_logits, atol=1e-4, rtol=1e-4)
    merged, stream = stream_answer(
        model, pipeline({"pre_vit_block": [{"strategy": "tome", "r": 16}]}, fpc=2), KEEP_FRAMES
    )
    assert [c.pre_prefill for c in stream.history] == [(16, 16)] * 2
    assert torch.isfinite(merged.first_logits).all()
    assert float((merged.first_logits - stream_logits).abs().max()) > 1e-4


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target_index=st.integers(0, 1),
    r=st.one_of(st.integers(1, 40), st.lists(st.integers(0, 40), min_size=1, max_size=4)),
    prop_attn=st.booleans(),
    seed=st.integers(0, 99),
)
def test_tome_on_qwen_counts_sources_and_grid(target_index, r, prop_attn, seed):
    """Per temporal slice: each layer removes min(r_l, n/2) tokens; sizes add up to the slice's 64
    patches; every patch has one owner and every slot's anchor is its own member; the post_vit
    grid is the last layer's merged tokens copied back to their members (un-merged before the
    2×2 merger), so the merger's output has the plain 16 tokens per slice."""
    target_cls = TARGETS[target_index]
    model = tiny(target_cls)
    frames = random_frames(4, seed=seed)
    stages = {"pre_vit_block": [{"strategy": "tome", "r": r, "prop_attn": prop_attn}]}
    tokens, state, bound = _tome_stream(model, stages, frames)
    depth = len(bound.target.vit_layers())
    schedule = bound.steps[0].params.schedule(depth)
    n = 64
    assert [rec.layer for rec in state.trace] == list(range(depth))  # every layer traced, r = 0 too
    for rec in state.trace:
        assert rec.r == min(schedule[rec.layer], n // 2)
        n -= rec.r
        assert rec.size.shape == (2, n, 1) and rec.out.shape[:2] == (2, n)
        assert torch.equal(rec.size.sum(dim=1), torch.full((2, 1), 64.0))
        assert torch.equal(rec.source.sum(dim=1), torch.ones(2, 64))  # one owner per patch
        assert torch.equal(rec.source.sum(dim=2)[..., None], rec.size)
    if state.owner is not None:  # something merged: every slot's anchor is one of its own members
        assert torch.equal(torch.gather(state.owner, 1, state.anchor), torch.arange(n).expand(2, -1))
    assert tokens.num_frames == 2 and tokens.count == 2 * 16 and tokens.is_full_grid()


@pytest.mark.parametrize("prop_attn", [True, False])
@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_tome_layer_is_the_stock_block_on_merged_tokens_at_their_anchors(target_cls, prop_attn):
    """Every layer after the first merge, rebuilt from the model's own modules: the stock attention
    on the previous layer's merged tokens, each at its anchor's rotary position and window
    (``log(size)`` = keys duplicated ``size`` times), the residual, the bipartite merge of the
    recorded decision, the stock MLP. Equal to ToMe's trace within 2e-5."""
    model = tiny(target_cls)
    frames = FRAMES[:4]
    target = target_cls(model, target_cls.Options(**SMALL))
    calls = {}

    def record(i):
        def hook(m, a, k):
            calls.setdefault(i, (m, a, k))

        return hook

    hooks = [
        layer.register_forward_pre_hook(record(i), with_kwargs=True)
        for i, layer in enumerate(target.vit_layers())
    ]
    try:
        _, state, bound = _tome_stream(
            model, {"pre_vit_block": [{"strategy": "tome", "r": 10, "prop_attn": prop_attn}]}, frames
        )
    finally:
        for h in hooks:
            h.remove()
    layout = target.chunk_layout(target.grid_thw(target.preprocess(frames)))
    packed_all = _packed_index(layout, 2 * 64)
    assert [rec.layer for rec in state.trace] == list(range(len(calls)))
    with torch.inference_mode():
        for prev, rec in zip(state.trace[:-1], state.trace[1:], strict=True):
            block, args, kwargs = calls[rec.layer]
            cu = args[1] if len(args) > 1 else kwargs["cu_seqlens"]
            cos, sin = kwargs["position_embeddings"]
            x = prev.out
            h = block.norm1(x)
            sizes = (
                prev.size[..., 0].round().long()
                if prop_attn
                else torch.ones(prev.size.shape[:2], dtype=torch.long)
            )
            packed = torch.gather(packed_all, 1, prev.anchor)
            y = x + _stock_attention_on_subset(block, cu, cos, sin, h, packed, sizes)
            k = block.attn.qkv(h).view(*h.shape[:2], 3, block.attn.num_heads, -1)[:, :, 1]
            torch.testing.assert_close(rec.metric, k.float().mean(dim=2), atol=1e-6, rtol=1e-6)
            match = match_bipartite(rec.metric, 10)
            merged, size = merge_wavg(match.merge, y.float(), prev.size)
            assert torch.equal(size, rec.size)
            torch.testing.assert_close(rec.x_after_merge, merged, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(rec.out, merged + block.mlp(block.norm2(merged)), atol=2e-5, rtol=1e-5)
            # the anchors follow the decision: each slot's kept token
            assert torch.equal(rec.anchor, prev.anchor.gather(1, match.anchor_index()))


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_tome_slices_never_mix(target_cls):
    """A 2-slice chunk merges each slice on its own: the same decisions (owners) and tokens as each
    slice encoded alone (attention never crosses a slice; matching runs per slice)."""
    model = tiny(target_cls)
    stages = {"pre_vit_block": [{"strategy": "tome", "r": 12}]}
    both, s_both, _ = _tome_stream(model, stages, FRAMES[:4], fpc=4)
    for k in range(2):
        one, s_one, _ = _tome_stream(model, stages, FRAMES[2 * k : 2 * k + 2], fpc=2)
        assert torch.equal(s_one.owner[0], s_both.owner[k])
        torch.testing.assert_close(one.tokens, both.tokens[both.frame == k], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ({"output": "compact"}, "changes the token count"),
        ({"class_token": True}, "cls_token"),
    ],
)
def test_tome_options_meaningless_on_qwen_are_refused(target_cls, step, reason):
    pipe = Pipeline.from_dict({"stages": {"pre_vit_block": [{"strategy": "tome", "r": 4, **step}]}})
    with pytest.raises(CompatibilityError) as err:
        pipe.bind(tiny(target_cls))
    msg = str(err.value)
    assert "'tome'" in msg and target_cls.name in msg and reason in msg


# ------------------------------------------------------------------------- VisionZip
def _eager_mean_received(block, args, kwargs, layout):
    """``[F, T]`` attention each token receives, averaged over heads and all T queries of its slice,
    from the model's own rotary function and a softmax per ``cu_seqlens`` segment (slice or window)."""
    mod = sys.modules[type(block).__module__]
    hidden, cu = args[0], (args[1] if len(args) > 1 else kwargs["cu_seqlens"])
    cos, sin = kwargs["position_embeddings"]
    attn = block.attn
    n = hidden.shape[0]
    q, k, _ = attn.qkv(block.norm1(hidden)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = mod.apply_rotary_pos_emb_vision(q, k, cos, sin)
    received = torch.zeros(n, attn.num_heads)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        logits = torch.einsum("qhd,khd->hqk", q[a:b].float(), k[a:b].float()) * attn.scaling
        received[a:b] = torch.softmax(logits, dim=-1).sum(dim=1).T
    return layout.to_frames(received).mean(dim=-1) / layout.slice_tokens


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_visionzip_scores_are_the_rotary_windowed_attention(target_cls):
    """For every block (windowed and full-attention ones on 2.5): the mean-received score recomputed
    through the adapter equals the eager attention of the model's own rotary code (1e-6), and the
    key metric is the head mean of the un-rotated keys."""
    model = tiny(target_cls)
    target = target_cls(model, target_cls.Options(**SMALL))
    vz = VisionZip(dominant=4, contextual=2)
    with block_calls(target, model, FRAMES[:4]) as (calls, layout):
        for block, args, kwargs in calls:
            a = target.block_adapter(block).bind(args[1:], kwargs)
            h = a.to_frames(args[0])
            maps, has_cls = vz.grid_maps(LayerProbe(h, a, len(calls)))
            assert not has_cls and maps.shape == (2, 64, 1 + a.head_dim)
            torch.testing.assert_close(
                maps[..., 0], _eager_mean_received(block, args, kwargs, layout), atol=1e-6, rtol=1e-5
            )
            torch.testing.assert_close(
                maps.sum(dim=1)[:, 0], torch.ones(2), atol=1e-5, rtol=0
            )  # a distribution
            kbar = a.k(a.ln1(h)).view(2, 64, a.num_heads, a.head_dim).mean(dim=2)
            torch.testing.assert_close(maps[..., 1:], kbar, atol=0, rtol=0)


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
def test_visionzip_on_qwen_is_the_kernel_on_merged_maps(target_cls):
    """The wiring: probe of the last block → scores and keys per ViT token → mean over each 2×2
    merge block (the tokens the merger pools into one) → the kernel on the merged tokens; output
    in raster order of the representatives."""
    model = tiny(target_cls)
    stages = {"post_vit": [{"strategy": "visionzip", "dominant": 5, "contextual": 3}]}
    with pipeline(stages, fpc=4).apply(model) as bound:
        assert bound.notes == [f"visionzip (post_vit) runs on target {target_cls.name}'s pre_prefill grid"]
        got = bound.stream().encode_only(FRAMES[:4])
        target = bound.target
    plain = pipeline(fpc=4)
    with plain.apply(model) as pb:
        merged = pb.stream().encode_only(FRAMES[:4]).tokens.view(2, 16, -1)
    vz = VisionZip(dominant=5, contextual=3)
    with block_calls(target, model, FRAMES[:4]) as (calls, _):
        block, args, kwargs = calls[-1]
        a = target.block_adapter(block).bind(args[1:], kwargs)
        maps, _ = vz.grid_maps(LayerProbe(a.to_frames(args[0]), a, len(calls)))
    pooled = maps.view(2, 16, 4, -1).mean(dim=2)
    sel = select(merged, pooled[..., 0], pooled[..., 1:], 5, 3, has_cls=False)
    for f in range(2):
        pos = torch.cat([sel.dominant_indices[f], sel.target_indices[f]])
        order = torch.argsort(pos)
        mine = got.frame == f
        assert torch.equal(got.local_index()[mine], pos[order])
        torch.testing.assert_close(got.tokens[mine], sel.output_tokens[f][order], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
@pytest.mark.parametrize(("dominant", "contextual"), [(16, 0), (10, 6)])
def test_visionzip_keep_everything_equals_the_plain_model(target_cls, dominant, contextual):
    """All 16 merged tokens kept (as dominant, or as dominant + contextual targets with nothing left
    to fold in): the plain model's logits, 1e-4 (in fact the same tokens and positions)."""
    model = tiny(target_cls)
    stages = {"post_vit": [{"strategy": "visionzip", "dominant": dominant, "contextual": contextual}]}
    answer, stream = stream_answer(model, pipeline(stages, fpc=2), KEEP_FRAMES)
    stream_logits, model_logits = plain_reference(target_cls)
    torch.testing.assert_close(answer.first_logits, model_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(answer.first_logits, stream_logits)
    assert [c.pre_prefill for c in stream.history] == [(16, 16)] * 2


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target_index=st.integers(0, 1),
    dominant=st.integers(1, 12),
    contextual=st.integers(0, 4),
    layer=st.sampled_from([-1, -2, 0]),
)
def test_visionzip_on_qwen_counts_and_positions(target_index, dominant, contextual, layer):
    """Per slice exactly dominant + contextual tokens, rows in raster order of their representative,
    and each kept token sits at the stock model's (t, h, w) position of its representative."""
    target_cls = TARGETS[target_index]
    model = tiny(target_cls)
    step = {"strategy": "visionzip", "dominant": dominant, "contextual": contextual, "layer": layer}
    frames = FRAMES[:4]
    with pipeline({"post_vit": [step]}, fpc=4).apply(model) as bound:
        seen = []
        original = bound.target.visual_positions

        def spy(state, tokens):
            pos = original(state, tokens)
            seen.append((tokens, pos))
            return pos

        bound.target.visual_positions = spy
        s = bound.stream()
        s.prefill_ids(torch.tensor([11, 12, 13, 14, 15]))
        s.add_frames(frames)
        full = plain_positions(model, bound.target, frames, 4)
    ((tokens, pos),) = seen
    per = dominant + contextual
    assert torch.equal(torch.bincount(tokens.frame, minlength=2), torch.full((2,), per))
    assert torch.equal(tokens.source, torch.sort(tokens.source).values)
    assert torch.equal(tokens.sizes.sum(), torch.tensor(float(2 * 16 - (16 - per) * (contextual == 0) * 2)))
    assert torch.equal(pos[:, 0, 1:-1], full[:, 5 + 1 + tokens.source])


def test_visionzip_runs_on_non_square_qwen_frames():
    """8×12 ViT patches (112×168 frames): the probe's token count needs no square-grid guess."""
    model = tiny(TARGETS[0])
    stages = {"post_vit": [{"strategy": "visionzip", "dominant": 6, "contextual": 2}]}
    pipe = Pipeline.from_dict(
        {
            "stream": {"frames_per_chunk": 2},
            "stages": stages,
            "target_options": {"frame_size": (112, 168), "max_pixels": 112 * 168},
        }
    )
    with pipe.apply(model) as bound:
        assert bound.target.vit_grid == (8, 12)
        out = bound.stream().encode_only(random_frames(2, seed=4, h=112, w=168))
    assert out.count == 8 and out.grid == (4, 6)


@pytest.mark.parametrize("target_cls", TARGETS, ids=IDS)
@pytest.mark.parametrize(
    ("step", "reason"),
    [({"placement": "before_pool"}, "at post_vit"), ({"score": "cls"}, "cls_token")],
)
def test_visionzip_options_meaningless_on_qwen_are_refused(target_cls, step, reason):
    pipe = Pipeline.from_dict(
        {"stages": {"post_vit": [{"strategy": "visionzip", "dominant": 4, "contextual": 1, **step}]}}
    )
    with pytest.raises(CompatibilityError) as err:
        pipe.bind(tiny(target_cls))
    msg = str(err.value)
    assert "'visionzip'" in msg and target_cls.name in msg and reason in msg
