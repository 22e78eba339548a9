"""VisualTokens invariants (docs/design.md §2, §8) as hypothesis properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencompress import VisualTokens


@st.composite
def carriers(draw):
    f = draw(st.integers(1, 4))
    h = draw(st.integers(1, 5))
    w = draw(st.integers(1, 5))
    d = draw(st.integers(1, 6))
    first = draw(st.integers(0, 50))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    return VisualTokens.from_frames(torch.randn(f, h * w, d, generator=g), (h, w), first)


@st.composite
def carrier_and_subset(draw):
    vt = draw(carriers())
    mask = draw(st.lists(st.booleans(), min_size=vt.count, max_size=vt.count))
    return vt, torch.tensor([i for i, m in enumerate(mask) if m], dtype=torch.long)


@settings(max_examples=60, deadline=None)
@given(carrier_and_subset())
def test_take_keeps_every_field_aligned(data):
    vt, idx = data
    out = vt.take(idx)
    assert out.count == idx.numel()
    assert torch.equal(out.tokens, vt.tokens[idx])
    assert torch.equal(out.source, vt.source[idx])
    h, w = vt.grid
    local = out.source % (h * w)
    assert torch.equal(out.pos, torch.stack((local // w, local % w), 1))
    assert torch.equal(out.frame, vt.first_frame + out.source // (h * w))
    kept = torch.zeros(vt.count, dtype=torch.bool)
    kept[idx] = True
    assert bool((out.assign[~kept] == -1).all())
    assert torch.equal(out.assign[idx], torch.arange(idx.numel()))
    assert int(out.counts().sum()) == out.count


@settings(max_examples=60, deadline=None)
@given(carriers(), st.integers(0, 2**16))
def test_merge_sizes_sum_and_every_token_in_one_group(vt, seed):
    g = torch.Generator().manual_seed(seed)
    per = vt.tokens_per_frame_in
    groups = (vt.frame - vt.first_frame) * per + torch.randint(0, per, (vt.count,), generator=g)
    out = vt.merge(groups)
    assert float(out.sizes.sum()) == vt.count
    assert bool((out.assign >= 0).all()) and int(out.assign.max()) == out.count - 1
    counts = torch.bincount(out.assign, minlength=out.count)
    assert torch.equal(counts.to(out.sizes.dtype), out.sizes)
    assert bool((out.source[1:] > out.source[:-1]).all()), "original order is kept"
    # merged value is the size-weighted mean of its members
    for row in range(out.count):
        members = vt.tokens[out.assign == row]
        torch.testing.assert_close(out.tokens[row], members.mean(0))


def test_merging_identical_tokens_loses_nothing():
    x = torch.randn(1, 4, 3).repeat(1, 1, 1)
    x[0, 1] = x[0, 0]
    vt = VisualTokens.from_frames(x, (2, 2))
    out = vt.merge(torch.tensor([0, 0, 1, 2]))
    assert torch.equal(out.tokens[0], x[0, 0])
    assert out.sizes.tolist() == [2.0, 1.0, 1.0]


def test_take_refuses_unsorted_and_merge_refuses_mixed_frames():
    vt = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2))
    with pytest.raises(ValueError, match="increasing"):
        vt.take(torch.tensor([2, 1]))
    with pytest.raises(ValueError, match="mix frames"):
        vt.merge(torch.tensor([0, 0, 1, 1, 1, 2, 2, 2]))
    with pytest.raises(ValueError, match="different token counts"):
        vt.take(torch.tensor([0, 1, 4])).dense()


def test_merge_with_anchor_and_own_arithmetic():
    x = torch.arange(12.0).view(1, 6, 2)
    vt = VisualTokens.from_frames(x, (2, 3))
    group = torch.tensor([1, 0, 1, 0, 2, 1])
    anchor = torch.tensor([3, 2, 4])  # representative rows of groups 0, 1, 2
    values = torch.tensor([[100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    out = vt.merge(group, tokens=values, anchor=anchor)
    assert out.source.tolist() == [2, 3, 4]  # ordered by anchor position
    assert out.tokens[:, 0].tolist() == [200.0, 100.0, 300.0]
    assert out.sizes.tolist() == [3.0, 2.0, 1.0]
    assert out.assign.tolist() == [0, 1, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="own group"):
        vt.merge(group, tokens=values, anchor=torch.tensor([0, 2, 4]))


def test_merge_of_a_carrier_with_no_rows_left_keeps_every_original_dropped():
    vt = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2)).take(torch.zeros(0, dtype=torch.long))
    out = vt.merge(torch.zeros(0, dtype=torch.long))
    assert out.count == 0 and out.assign.tolist() == [-1] * 8


def test_merge_counts_stay_exact_in_bfloat16():
    x = torch.randn(1, 300, 4).bfloat16()
    out = VisualTokens.from_frames(x, (15, 20)).merge(torch.zeros(300, dtype=torch.long))
    assert out.sizes.tolist() == [300.0] and out.tokens.dtype == torch.bfloat16
    torch.testing.assert_close(out.tokens[0].float(), x[0].float().mean(0), atol=1e-2, rtol=1e-2)


@settings(max_examples=60, deadline=None)
@given(carrier_and_subset(), st.integers(0, 2**16))
def test_regroup_is_take_then_merge_with_anchors(data, seed):
    """regroup(owner, anchor, tokens) gives every field of take(kept rows).merge(..., tokens, anchor),
    also on a carrier already cut (dropped originals read -1) and with merged rows (sizes add up)."""
    vt, idx = data
    vt = vt.take(idx)
    if vt.count:  # neighbouring grid positions merged: sizes above 1
        vt = vt.merge((vt.frame - vt.first_frame) * vt.tokens_per_frame_in + vt.local_index() // 2)
    g = torch.Generator().manual_seed(seed)
    # each row: dropped, or into one of 3 groups of its own frame; a group's anchor is its first row
    label = torch.randint(-1, 3, (vt.count,), generator=g)
    key = torch.where(label >= 0, (vt.frame - vt.first_frame) * 3 + label, -1)
    alive = torch.nonzero(key >= 0).squeeze(1)
    uniq, inv = torch.unique(key[alive], return_inverse=True)
    owner = torch.full((vt.count,), -1, dtype=torch.long)
    owner[alive] = inv
    anchor = torch.full((uniq.numel(),), vt.count, dtype=torch.long).scatter_reduce(
        0, inv, alive, reduce="amin"
    )
    order = torch.argsort(anchor)  # output rows numbered by anchor
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    owner[alive] = rank[inv]
    anchor = anchor[order]
    values = torch.randn(anchor.numel(), vt.dim, generator=g)
    got = vt.regroup(owner, anchor, values)
    sub = vt.take(alive)
    remap = torch.full((vt.count,), -1, dtype=torch.long)
    remap[alive] = torch.arange(alive.numel())
    want = sub.merge(owner[alive], tokens=values, anchor=remap[anchor])
    for field in ("tokens", "frame", "pos", "source", "sizes", "assign"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_regroup_refuses_what_merge_refuses():
    vt = VisualTokens.from_frames(torch.randn(2, 4, 3), (2, 2))
    rows = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="increasing"):
        vt.regroup(torch.tensor([1, -1, -1, -1, 0, -1, -1, -1]), torch.tensor([4, 0]), rows)
    with pytest.raises(ValueError, match="own output row"):
        vt.regroup(torch.tensor([1, 0, -1, -1, -1, -1, -1, -1]), torch.tensor([0, 1]), rows)
    with pytest.raises(ValueError, match="mix frames"):
        vt.regroup(torch.tensor([0, -1, -1, -1, 1, 0, -1, -1]), torch.tensor([0, 4]), rows)
    with pytest.raises(ValueError, match=r"lie in \[-1, 2\)"):
        vt.regroup(torch.tensor([0, 2, -1, -1, 1, -1, -1, -1]), torch.tensor([0, 4]), rows)
    with pytest.raises(ValueError, match="3 rows for 2 anchors"):
        vt.regroup(torch.tensor([0, -1, -1, -1, 1, -1, -1, -1]), torch.tensor([0, 4]), torch.zeros(3, 3))
