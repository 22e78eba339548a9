"""Built-in random-weight models of the other targets: ``builtin-qwen``, ``builtin-qwen3``,
``builtin-llava-next-video``.

Each is its target's own tiny test model (``Target.tiny_model``: the same widths and depths the
target tests use) with the vocabulary and the media token ids of the offline tokenizer, so the
command line can stream a video through every target without a checkpoint. Like ``builtin``
they have **random weights**: token counts, FLOPs and timings are real, answers are noise.
Token geometry: ``builtin-qwen`` (Qwen2.5-VL, 14-px patches, windowed and full ViT blocks) and
``builtin-qwen3`` (Qwen3-VL, 16-px patches, DeepStack after ViT block 0) take 448x448 frames,
256 and 196 merged tokens per 2-frame slice; ``builtin-llava-next-video`` has the real
checkpoints' 336-px CLIP grid (24x24 + CLS, pooled to 144 tokens per frame).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..api.errors import TokenCompressError

__all__ = ["BUILTIN_TARGET_MODELS", "build_builtin_target_model", "is_builtin_target_model"]


@dataclass(frozen=True)
class _Builtin:
    name: str
    target: str
    architecture: str
    layout: str
    media: dict[str, str]
    """config attribute → placeholder token whose id it takes from the tokenizer."""


_QWEN_MEDIA = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}

BUILTIN_TARGET_MODELS: dict[str, _Builtin] = {
    "builtin-qwen": _Builtin(
        "builtin:tiny-qwen2.5-vl",
        "qwen2_5_vl",
        "Qwen2.5-VL architecture, 448 px frames: 256 tokens per 2-frame slice",
        "qwen2_vl",
        _QWEN_MEDIA,
    ),
    "builtin-qwen3": _Builtin(
        "builtin:tiny-qwen3-vl",
        "qwen3_vl",
        "Qwen3-VL architecture with DeepStack, 448 px frames: 196 tokens per 2-frame slice",
        "qwen2_vl",
        _QWEN_MEDIA,
    ),
    "builtin-llava-next-video": _Builtin(
        "builtin:tiny-llava-next-video",
        "llava_next_video",
        "LLaVA-NeXT-Video architecture, 336 px CLIP: 576 + CLS ViT tokens, 144 pooled per frame",
        "llava_onevision",
        {"image_token_index": "<image>", "video_token_index": "<video>"},
    ),
}
"""``--model`` name → what it builds. The names resolve to themselves and to ``name``."""


def is_builtin_target_model(name: str) -> bool:
    """``name`` is one of these models' ``--model`` names (or the name its description shows)."""
    return _resolve(name) is not None


def _resolve(name: str) -> _Builtin | None:
    for key, spec in BUILTIN_TARGET_MODELS.items():
        if name in (key, spec.name):
            return spec
    return None


def _tiny(spec: _Builtin) -> nn.Module:
    from ..plugins.registry import Registry

    target = Registry().target(spec.target)
    if spec.target == "llava_next_video":
        return target.tiny_model(image_size=336)  # type: ignore[call-arg]
    return target.tiny_model()


def _media_ids(tok: Any, spec: _Builtin, source: str | None) -> dict[str, int]:
    ids = {}
    for attr, token in spec.media.items():
        tid = tok.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid < 0 or tid == tok.unk_token_id:
            raise TokenCompressError(
                f"--tokenizer {source}: has no {token} token, which the built-in {spec.target} model needs; "
                "leave --tokenizer out for the built-in models"
            )
        ids[attr] = tid
    return ids


def build_builtin_target_model(
    name: str, seed: int = 0, tokenizer: tuple[Any, str] | None = None, source: str | None = None
) -> tuple[nn.Module, Any, str, str]:
    """``(model, tokenizer, description, tokenizer description)`` of the built-in model ``name``
    (a key of :data:`BUILTIN_TARGET_MODELS`); ``models.load_model`` wraps them.

    ``tokenizer`` is an explicit ``(tokenizer, description)`` (from ``--tokenizer source``); it
    must have the target's media tokens. Without it, the offline tokenizer of the target's layout.
    """
    from .tokenizer import load_tokenizer

    spec = _resolve(name)
    if spec is None:
        raise TokenCompressError(
            f"unknown built-in model '{name}'; use one of {', '.join(BUILTIN_TARGET_MODELS)}"
        )
    tok, tok_desc = tokenizer if tokenizer is not None else load_tokenizer(spec.layout)  # type: ignore[arg-type]
    ids = _media_ids(tok, spec, source)
    tiny = _tiny(spec)
    config = copy.deepcopy(tiny.config)
    config.get_text_config().vocab_size = len(tok)
    for attr, tid in ids.items():
        setattr(config, attr, tid)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = type(tiny)(config).eval()
    n = sum(p.numel() for p in model.parameters())
    desc = f"{spec.name} ({spec.architecture}, {n / 1e6:.1f} M parameters, RANDOM weights: answers are noise)"
    return model, tok, desc, tok_desc
