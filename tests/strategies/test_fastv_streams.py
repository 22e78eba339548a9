"""FastV and PyramidDrop in streams: every built-in target, per-layer cache lengths, positions, the
stream rule against the offline rule, transactions, grouped prefills and the sliding window."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.in_decoder import patched, tiny_llama
from tests.support.models import random_frames
from tokencompress import Pipeline, Registry, Stage
from tokencompress.api.errors import CompatibilityError, PluginFault
from tokencompress.api.in_decoder import InDecoderState
from tokencompress.strategies.fastv import FastV, fastv_keep

REG = Registry()
FRAMES = random_frames(4, seed=3)
QUESTION = torch.tensor([5, 9, 14, 3])
_MODELS: dict[str, torch.nn.Module] = {}


def tiny(target: str) -> torch.nn.Module:
    if target not in _MODELS:
        _MODELS[target] = REG.target(target).tiny_model()
    return _MODELS[target]


def pipe(target: str, step: dict | None, stream: dict | None = None, kv: dict | None = None) -> Pipeline:
    stages: dict = {"in_decoder": [step]} if step else {}
    if kv:
        stages["kv_cache"] = [kv]
    return Pipeline.from_dict(
        {"target": target, "stream": {"frames_per_chunk": 2, **(stream or {})}, "stages": stages}, REG
    )


def lengths(stream) -> list[int]:  # noqa: ANN001
    return [int(layer.get_seq_length()) for layer in stream.llm.cache.layers]


STEPS = [
    ("llava_onevision", {"strategy": "fastv", "layer": 1, "ratio": 0.75}),
    ("llava_onevision", {"strategy": "pdrop", "layer_list": [1], "ratio": 0.5}),
    ("llava_next_video", {"strategy": "fastv", "layer": 1}),
    ("llava_next_video", {"strategy": "pdrop", "layer_list": [1]}),
    ("qwen2_vl", {"strategy": "fastv", "layer": 1}),
    ("qwen2_5_vl", {"strategy": "pdrop", "layer_list": [1], "positions": "keep"}),
    ("qwen3_vl", {"strategy": "fastv", "layer": 1, "rank_rows": "mean"}),
]


@pytest.mark.parametrize(("target", "step"), STEPS, ids=[f"{s['strategy']}@{t}" for t, s in STEPS])
def test_a_stream_keeps_fewer_entries_past_the_boundary_and_answers(target: str, step: dict) -> None:
    model = tiny(target)
    with pipe(target, None).apply(model) as bound:
        base = bound.stream()
        base.add_frames(FRAMES)
    with pipe(target, step).apply(model) as bound:
        s = bound.stream()
        stats = s.add_frames(FRAMES)
        full = lengths(s)
        visual = sum(c.pre_prefill[1] for c in stats)
        kept = sum(bound.in_decoder.keep(c.pre_prefill[1], 0) for c in stats)
        assert full[0] == lengths(base)[0] and full[1] == full[0] - (visual - kept)
        assert s.llm.next_position == base.llm.next_position  # later tokens continue the original numbering
        answer = s.ask(QUESTION, max_new_tokens=3)
        assert torch.isfinite(answer.first_logits).all()
        assert lengths(s) == full  # the question and answer went again, in every layer
    lm = bound.target.language_model
    assert not any(layer._forward_pre_hooks for layer in lm.layers)
    assert lm.config._attn_implementation == "sdpa"  # the attention function the hooks wrapped is back


def test_pdrop_renumbers_each_stage_across_chunks_and_decode() -> None:
    """In stage j a new token's position is that stage's cache length (the decoder's own counter)."""
    model = tiny("llava_next_video")
    with pipe("llava_next_video", {"strategy": "pdrop", "layer_list": [1]}).apply(model) as bound:
        s = bound.stream()
        s.add_frames(FRAMES)
        seen: list[int] = []
        layer1 = bound.target.language_model.layers[1]
        hook = layer1.register_forward_pre_hook(
            lambda _m, a, kw: seen.append(int(kw["position_ids"][0, 0])), with_kwargs=True
        )
        before = lengths(s)
        try:
            s.ask(QUESTION, max_new_tokens=3)
        finally:
            hook.remove()
        assert seen[0] == before[1] != before[0]
        assert seen[1:] == list(range(before[1] + QUESTION.numel(), before[1] + QUESTION.numel() + 2))


def test_mask_mode_answers_as_drop_mode() -> None:
    """Hidden keys leave the kept tokens' computation as if the dropped ones were gone."""
    model = tiny("llava_onevision")
    out = []
    for mode in ("drop", "mask"):
        with pipe("llava_onevision", {"strategy": "fastv", "layer": 1, "mode": mode}).apply(model) as bound:
            s = bound.stream()
            s.add_frames(FRAMES)
            out.append(s.ask(QUESTION, max_new_tokens=2).first_logits)
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=1e-4)


def test_grouped_prefill_equals_chunk_by_chunk() -> None:
    """Each chunk of a group is ranked by its own last row: the same kept tokens as separate prefills."""
    model = tiny("qwen2_vl")
    got = []
    for group in (1, 2):
        step = {"strategy": "fastv", "layer": 1}
        with pipe("qwen2_vl", step, {"frames_per_chunk": 2, "prefill_chunks": group}).apply(model) as bound:
            s = bound.stream()
            s.add_frames(random_frames(8, seed=4))
            s.flush()
            got.append((lengths(s), s.llm.in_decoder.present[0].clone(), s.ask(QUESTION, 2).first_logits))
    assert got[0][0] == got[1][0]
    assert torch.equal(got[0][1], got[1][1])
    torch.testing.assert_close(got[0][2], got[1][2], atol=1e-4, rtol=1e-4)


class _Boom(Exception):
    pass


def test_a_failed_chunk_leaves_every_layer_and_the_bookkeeping_as_they_were() -> None:
    model = tiny("llava_onevision")
    step = {"strategy": "pdrop", "layer_list": [1]}
    with pipe("llava_onevision", step).apply(model) as bound:
        clean = bound.stream()
        clean.add_frames(FRAMES)
        want = clean.ask(QUESTION, 2).first_logits
        s = bound.stream()
        s.add_frames(FRAMES[:2])
        before = (lengths(s), s.llm.in_decoder.dropped[:], s.llm.in_decoder.present[0].clone())
        layer1 = bound.target.language_model.layers[1]
        armed = {"on": True}

        def fail(*_a):  # noqa: ANN002
            if armed["on"]:
                raise _Boom

        hook = layer1.register_forward_hook(fail)  # after layer 1 stored its (dropped) entries
        with pytest.raises(PluginFault, match="_Boom"):
            s.add_frames(FRAMES[2:])
        hook.remove()
        assert (lengths(s), s.llm.in_decoder.dropped) == before[:2]
        assert torch.equal(s.llm.in_decoder.present[0], before[2])
        s.add_frames(FRAMES[2:])
        torch.testing.assert_close(s.ask(QUESTION, 2).first_logits, want)


def test_sliding_window_keeps_each_layers_own_window_entries() -> None:
    model = tiny("llava_onevision")
    step = {"strategy": "fastv", "layer": 1}
    with pipe("llava_onevision", step, kv={"strategy": "sliding_window", "n_local": 40}).apply(
        model
    ) as bound:
        s = bound.stream()
        s.add_frames(random_frames(8, seed=5))
        held = s.llm.in_decoder.entries(1)
        assert lengths(s)[0] == held.numel() and lengths(s)[1] == int(held.sum()) < lengths(s)[0]
        assert torch.isfinite(s.ask(QUESTION, 2).first_logits).all()
    with pipe("llava_onevision", step, kv={"strategy": "sliding_window", "n_local": 10**4}).apply(
        model
    ) as bound:
        s = bound.stream()
        s.add_frames(FRAMES)
        wide = s.ask(QUESTION, 2).first_logits
    with pipe("llava_onevision", step).apply(model) as bound:
        s = bound.stream()
        s.add_frames(FRAMES)
        torch.testing.assert_close(s.ask(QUESTION, 2).first_logits, wide)


# ---------------------------------------------------------------- the stream rule vs the offline rule
def offline_fastv(model, x: torch.Tensor, start: int, n: int, layer: int, k: int):  # noqa: ANN001
    """The authors' offline FastV spelled out: eager attention maps of the full prompt, the last
    row of layer K-1 ranks the span, layers >= K run on the kept rows at their original positions."""
    length = x.shape[1]
    attn = model(inputs_embeds=x, output_attentions=True).attentions[layer - 1]
    scores = attn[0, :, length - 1, start : start + n].mean(dim=0)
    top = torch.topk(scores, k).indices + start
    keep = torch.sort(torch.cat([torch.arange(start), top, torch.arange(start + n, length)])).values
    pos = torch.arange(length)[None]
    pe = model.rotary_emb(x, pos)
    h = x
    for i, block in enumerate(model.layers):
        if i == layer:
            h, pe = h[:, keep], tuple(t[:, keep] for t in pe)
        rows = h.shape[1]
        causal = torch.full((rows, rows), torch.finfo(h.dtype).min).triu(1)[None, None]
        h = block(h, attention_mask=causal, position_embeddings=pe)
    return keep, model.norm(h)


PROPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(
    prefix=st.integers(1, 5),
    n=st.integers(2, 24),
    question=st.integers(1, 6),
    layer=st.integers(1, 3),
    ratio=st.sampled_from([0.25, 0.5, 0.75]),
    seed=st.integers(0, 10**6),
)
def test_with_the_question_in_the_same_prefill_the_stream_rule_is_the_offline_rule(
    prefix: int, n: int, question: int, layer: int, ratio: float, seed: int
) -> None:
    """A chunk announced the way a stream announces it (a visual-row mask for the call), ranked by its
    segment's last row, equals the reference's offline FastV when the question is in that prefill."""
    model = tiny_llama({"num_layers": 4, "num_kv_heads": 2}, attn="eager", seed=seed % 97)
    g = torch.Generator().manual_seed(seed)
    length = prefix + n + question
    x = torch.randn(1, length, 32, generator=g)
    k = fastv_keep(n, ratio)
    want_keep, want = offline_fastv(model, x, prefix, n, layer, max(k, 1))
    strategy = FastV(layer=layer, ratio=ratio)
    state = InDecoderState(boundaries=1, layers=(layer,))
    mask = torch.zeros(length, dtype=torch.bool)
    mask[prefix : prefix + n] = True
    state.pending.append(mask)
    with patched(model, strategy) as patch, patch.scope(state):
        got = model(inputs_embeds=x).last_hidden_state
    run = patch.last_run()
    assert torch.equal(run.kept[0], want_keep)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- composition
TOKEN_STRATEGIES = sorted(
    name
    for name, reg in REG.strategies.items()
    if reg.cls.stage.value in ("pre_vit_block", "post_vit", "pre_prefill")
)


@pytest.mark.parametrize("token", TOKEN_STRATEGIES)
def test_fastv_composes_with_every_token_strategy(token: str) -> None:
    """FastV acts on whatever reaches the decoder: after any token stage, layers past its boundary
    hold the chunk's prefilled tokens minus the ones it dropped."""
    cls = REG.strategy(token)
    model = tiny("llava_onevision")
    info = REG.target("llava_onevision")(model).stage_info()[cls.stage]
    stages = {cls.stage.value: [{"strategy": token, **cls.conformance_params(info)}]}
    stages["in_decoder"] = [{"strategy": "fastv", "layer": 1}]
    config = {"target": "llava_onevision", "stream": {"frames_per_chunk": 2}, "stages": stages}
    with Pipeline.from_dict(config, REG).apply(model) as bound:
        s = bound.stream()
        stats = s.add_frames(FRAMES)
        dropped = sum(c.pre_prefill[1] - bound.in_decoder.keep(c.pre_prefill[1], 0) for c in stats)
        assert lengths(s)[1] == lengths(s)[0] - dropped
        assert torch.isfinite(s.ask(QUESTION, 2).first_logits).all()


@pytest.mark.parametrize("kv", ["rekv", "infinipot_v"])
def test_memories_that_index_blocks_across_layers_are_refused(kv: str) -> None:
    step = {
        "strategy": kv,
        **REG.strategy(kv).conformance_params(
            REG.target("llava_onevision")(tiny("llava_onevision")).stage_info()[Stage.PRE_PREFILL]
        ),
    }
    with pytest.raises(CompatibilityError, match="same cache entries"):
        pipe("llava_onevision", {"strategy": "fastv", "layer": 1}, kv=step).bind(tiny("llava_onevision"))


def test_a_chunk_pruned_whole_announces_no_span() -> None:
    """A chunk whose tokens were all pruned prefills nothing; the next call (a question) ranks nothing."""
    model = tiny_llama({"num_layers": 3}, seed=1)
    state = InDecoderState(boundaries=1, layers=(1,))
    state.pending.append(torch.zeros(0, dtype=torch.bool))
    with patched(model, FastV(layer=1)) as patch, patch.scope(state):
        model(inputs_embeds=torch.randn(1, 5, 32))
    assert not patch.last_run().records and state.pending == []
