"""A stock transformers LlamaModel under an in_decoder strategy, for the FastV / PyramidDrop tests.

``tiny_llama`` builds the model a fixture describes (weights under ``weight.<state-dict key>``) or a
seeded random one; ``patched`` installs a strategy's hooks on it the way a bound pipeline does;
``record_positions`` records the position ids every layer is handed (registered after the patch's
hooks, so it sees what they hand on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import LlamaConfig, LlamaModel

from tokencompress.api.in_decoder import DecoderStack, InDecoderStrategy
from tokencompress.patching.in_decoder import InDecoderPatch


def tiny_llama(
    params: dict, weights: dict[str, torch.Tensor] | None = None, attn: str = "sdpa", seed: int = 0
) -> LlamaModel:
    vocab = weights["weight.embed_tokens.weight"].shape[0] if weights else 16
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=params.get("hidden_size", 32),
        intermediate_size=params.get("intermediate_size", 64),
        num_hidden_layers=params.get("num_layers", 4),
        num_attention_heads=params.get("num_heads", 4),
        num_key_value_heads=params.get("num_kv_heads", 4),
        head_dim=params.get("head_dim", 8),
        rms_norm_eps=params.get("rms_norm_eps", 1e-6),
        rope_theta=params.get("rope_theta", 10000.0),
        max_position_embeddings=4096,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    model = LlamaModel(config).eval()
    if weights:
        state = {k.removeprefix("weight."): v for k, v in weights.items() if k.startswith("weight.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        assert all("rotary" in m for m in missing), missing
    return model


def stack_of(model: LlamaModel) -> DecoderStack:
    return DecoderStack(
        layers=tuple(model.layers),
        rotary=model.rotary_emb,
        mrope=False,
        attention=model.config._attn_implementation,
    )


@contextmanager
def patched(model: LlamaModel, strategy: InDecoderStrategy) -> Iterator[InDecoderPatch]:
    with InDecoderPatch(stack_of(model), strategy, model) as patch:
        patch.record = True
        yield patch


@contextmanager
def record_positions(model: LlamaModel) -> Iterator[list[torch.Tensor]]:
    """Position ids (flattened) each layer gets during the block, in layer order per call."""
    seen: list[torch.Tensor] = []
    handles = []

    def hook(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs["position_ids"].reshape(-1).clone())

    for layer in model.layers:
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def layer_lengths(cache) -> list[int]:  # noqa: ANN001 - a transformers cache
    return [int(layer.get_seq_length()) for layer in cache.layers]
