"""DyCoke's decode-time KV pruning (``dycoke_kv``): every ``dycoke_kv*`` reference case, data-driven.

``dycoke_kv`` drives the policy with the given layer-(l-1) probabilities; ``dycoke_kv_decode`` runs a
transformers 5 ``Qwen2ForCausalLM`` loaded with the case's weights through the same attention routing
a pipeline installs (:class:`tokencompress.patching.decode_keys.DecodeKeys`), step by step.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.fixture_cases import Case, need, params
from tokencompress.api.decode_policy import DecodeStep
from tokencompress.api.target import cache_argument
from tokencompress.patching.decode_keys import DecodeKeys
from tokencompress.strategies.dycoke_kv import DycokeKVParams, DycokeKVState, num_keep

KINDS = {"dycoke_kv", "dycoke_kv_decode"}


class Recording(DycokeKVState):
    """The policy, also keeping the probabilities it was given at each step."""

    def __init__(self, params: DycokeKVParams) -> None:
        super().__init__(params)
        self.probs: list[torch.Tensor] = []

    def decide(self, probs, visual):  # type: ignore[no-untyped-def]
        self.probs.append(probs.detach().clone())
        return super().decide(probs, visual)


def _state(case: Case, layer: int, span_excludes_last: bool) -> Recording:
    p = need(case.meta, "params", "dycoke_p", where=case.name)
    assert 0.0 <= p < 1.0, f"{case.name}: p = {p}"
    return Recording(
        DycokeKVParams(
            l=layer,
            p=p,
            threshold=need(case.meta, "params", "threshold", where=case.name),
            reset_per_question=False,  # the reference carries the previous step across calls (Q15)
            span_excludes_last=span_excludes_last,
        )
    )


def _check_step(case: Case, t: dict, prefix: str, meta: dict, state: DycokeKVState, errors: dict) -> None:
    """One step's decision against ``{prefix}image_attention``, ``similarity``, ``pruned``, ``kept_indices``
    and ``top_visual`` (a ``boundary_tie`` step may choose among the tied positions)."""
    last = state.last
    for key, got in (
        ("image_attention", last["image_attention"]),
        ("similarity", torch.tensor(last["similarity"])),
    ):
        want = t[f"{prefix}{key}"]
        tol = case.tolerance(key)
        torch.testing.assert_close(
            got.float(), want.float(), **tol, msg=lambda m, k=key, at=prefix: f"{case.name} {at}{k}: {m}"
        )
        errors[key] = max(errors.get(key, 0.0), float((got.float() - want.float()).abs().max()))
    assert last["pruned"] == bool(t[f"{prefix}pruned"]), f"{case.name} {prefix}: pruned differs"
    s_t = need(meta, "seq_len", where=case.name)
    kept = last["kept"] if last["kept"] is not None else torch.arange(s_t)
    top = last["top_visual"] if last["top_visual"] is not None else torch.zeros(0, dtype=torch.long)
    want_kept, want_top = t[f"{prefix}kept_indices"], t[f"{prefix}top_visual"]
    assert kept.numel() == need(meta, "kept_len", where=case.name), f"{case.name} {prefix}: kept length"
    if "boundary_tie" in meta:
        tie = meta["boundary_tie"]
        must, tied = (
            set(need(tie, "must_keep", where=case.name)),
            set(need(tie, "choose_from_tied", where=case.name)),
        )
        got = set(top.tolist())
        assert must <= got and got - must <= tied and len(got) == len(want_top), (
            f"{case.name} {prefix}: tie rule"
        )
        assert set(kept.tolist()) - got == set(want_kept.tolist()) - set(want_top.tolist())
        return
    assert torch.equal(kept.cpu(), want_kept), (
        f"{case.name} {prefix}kept_indices: {kept.tolist()} vs {want_kept.tolist()}"
    )
    assert torch.equal(top.cpu(), want_top), f"{case.name} {prefix}top_visual differs"


def _check_kv(case: Case) -> dict[str, float]:
    t = case.tensors()
    prm = need(case.meta, "params", where=case.name)
    start, n = need(prm, "image_token_start_index"), need(prm, "image_token_length")
    state = _state(case, 1, span_excludes_last=False)  # the span is given; l only names the deciding layer
    errors: dict[str, float] = {}
    steps = need(case.meta, "steps", where=case.name)
    assert steps, f"{case.name}: no steps"
    call = None
    for i, meta in enumerate(steps):
        if meta.get("call") != call:
            call = meta.get("call")
            state.begin_question()
        probs = t[f"step{i}.attn"]
        visual = torch.zeros(probs.shape[1], dtype=torch.bool)
        visual[start : start + n] = True
        assert num_keep(n, prm["dycoke_p"]) == need(meta, "num_keep", where=case.name)
        state.decide(probs, visual)
        _check_step(case, t, f"step{i}.", meta, state, errors)
    return errors


def _model(case: Case, t: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = need(case.meta, "params", "model", where=case.name)
    config = Qwen2Config(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"], head_dim=m["head_dim"], rope_theta=m["rope_theta"],
        rms_norm_eps=m["rms_norm_eps"], hidden_act=m["hidden_act"], tie_word_embeddings=m["tie_word_embeddings"],
        attn_implementation="sdpa",
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    weights = {k[len("model.") :]: v for k, v in t.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    return model


def _check_decode(case: Case) -> dict[str, float]:
    from transformers import DynamicCache

    t = case.tensors()
    prm = need(case.meta, "params", where=case.name)
    model = _model(case, t)
    lm = model.model
    layer = need(prm, "dycoke_l")
    state = _state(case, layer, span_excludes_last=True)  # the reference's span is N_ttm - 1 long (Q13)
    start, n_ttm = need(prm, "image_token_start_index"), need(prm, "ttm", "num_out")
    assert need(prm, "image_token_length") == n_ttm - 1
    errors: dict[str, float] = {}
    logit_tol, attn_tol = case.tolerance("logits"), case.tolerance("attn")
    with DecodeKeys(lm, [blk.self_attn for blk in lm.layers], True) as keys, torch.inference_mode():
        assert keys.switched
        for c, call in enumerate(need(case.meta, "calls", where=case.name)):
            embeds = t[f"call{c}.inputs_embeds"]
            length = embeds.shape[0]
            assert length == need(call, "prompt_len", where=case.name)
            visual = torch.zeros(length, dtype=torch.bool)
            visual[start : start + n_ttm] = True  # the TTM tokens; the newline after them is not video
            cache, arg = DynamicCache(config=model.config), cache_argument(lm)
            out = lm(inputs_embeds=embeds[None], position_ids=torch.arange(length)[None], **{arg: cache})
            logits = model.lm_head(out.last_hidden_state[0, -1])
            torch.testing.assert_close(logits, t[f"call{c}.prefill_logits"], **logit_tol)
            state.begin_question()
            step = DecodeStep(state)
            with keys.answering(step, visual):
                for i, token in enumerate(t[f"call{c}.decode_ids"].tolist()):
                    pos = torch.tensor([[length + i]])
                    out = lm(input_ids=torch.tensor([[token]]), position_ids=pos, **{arg: cache})
                    logits = model.lm_head(out.last_hidden_state[0, -1])
                    prefix, meta = f"call{c}.step{i}.", call["steps"][i]
                    for key, got, tol in (("logits", logits, logit_tol), ("attn", state.probs[-1], attn_tol)):
                        want = t[f"{prefix}{key}"]
                        torch.testing.assert_close(
                            got, want, **tol, msg=lambda m, k=key, at=prefix: f"{case.name} {at}{k}: {m}"
                        )
                        errors[key] = max(errors.get(key, 0.0), float((got - want).abs().max()))
                    _check_step(case, t, prefix, meta, state, errors)
                    got_len = torch.tensor(step.attended)
                    assert torch.equal(got_len, t[f"{prefix}attended_len"]), (
                        f"{case.name} {prefix}attended_len {got_len.tolist()}"
                    )
    assert not keys.switched and lm.config._attn_implementation == "sdpa"
    return errors


CHECKS = {"dycoke_kv": _check_kv, "dycoke_kv_decode": _check_decode}


@pytest.mark.parametrize("case", params("dycoke", KINDS))
def test_fixture(case: Case) -> None:
    errors = CHECKS[case.kind](case)
    print(f"{case.name}: max abs error {max(errors.values(), default=0.0):.3g} {errors}")
