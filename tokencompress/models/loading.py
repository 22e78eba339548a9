"""Getting a model and tokenizer: a saved checkpoint through ``from_pretrained``, or the built-in one.

The built-in model has LLaVA-OneVision's architecture and real token geometry (384 px, patch 14:
729 ViT tokens → 196 pooled tokens per frame, Qwen2 LLM) but a small width and **random
weights**: it exercises every code path and gives meaningful token and FLOP ratios, not
meaningful answers. No weights can be downloaded where this project is tested.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api.errors import TokenCompressError

__all__ = ["LoadedModel", "build_default_model", "default_model_config", "load_model"]

DEFAULT_NAME = "builtin:tiny-llava-onevision"
MEDIUM_NAME = "builtin:medium-llava-onevision"
BENCH_NAME = "builtin:bench-llava-onevision"

MEDIUM_OVERRIDES: dict[str, dict[str, Any]] = {
    # SigLIP-so400m width and Qwen2-0.5B width, 4 layers each: every per-token cost (a ViT
    # layer on 729 tokens, an LLM layer on 196) is real-size, so compression ratios in time mean
    # something, while one frame stays around a second on a 2-core CPU.
    "vision_config": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=4, num_attention_heads=16
    ),
    "text_config": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=4,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
}


BENCH_OVERRIDES: dict[str, dict[str, Any]] = {
    # The benchmark preset of the README's performance table: the same real widths as
    # builtin-medium, deeper (6 ViT layers, 8 LLM layers) so the per-layer costs that compression
    # removes outweigh the fixed per-chunk work (patch embedding, projector, pooling) as in the
    # full models.
    "vision_config": dict(MEDIUM_OVERRIDES["vision_config"], num_hidden_layers=6),
    "text_config": dict(MEDIUM_OVERRIDES["text_config"], num_hidden_layers=8),
}

_PRESETS: dict[str, tuple[str, dict[str, dict[str, Any]], str]] = {
    "tiny": (DEFAULT_NAME, {}, ""),
    "medium": (
        MEDIUM_NAME,
        MEDIUM_OVERRIDES,
        "SigLIP-so400m width x 4 layers + Qwen2-0.5B width x 4 layers, ",
    ),
    "bench": (BENCH_NAME, BENCH_OVERRIDES, "SigLIP-so400m width x 6 layers + Qwen2-0.5B width x 8 layers, "),
}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    description: str
    tokenizer_description: str
    random_weights: bool
    notes: tuple[str, ...] = ()
    """What the user should know about how the model or tokenizer was chosen (a fallback taken)."""


def default_model_config(vocab_size: int, image_token_id: int, video_token_id: int, **overrides: Any) -> Any:
    """LLaVA-OV config with real token geometry and a small width (fast on a laptop CPU)."""
    from transformers import LlavaOnevisionConfig

    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
    )
    text = dict(
        model_type="qwen2",
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    vision.update(overrides.pop("vision_config", {}))
    text.update(overrides.pop("text_config", {}))
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        video_token_index=video_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=True,
        **overrides,
    )


def build_default_model(seed: int = 0, tokenizer: Any = None, size: str = "tiny") -> LoadedModel:
    """The built-in random-weight LLaVA-OV model with the best tokenizer this machine has.

    ``size="medium"`` and ``size="bench"`` have real per-token widths at reduced depth, for
    latency figures the tiny model (all overhead) cannot give; ``bench`` is the preset of the
    README's performance table (``benchmarks/``).
    """
    if size not in _PRESETS:
        raise TokenCompressError(f"unknown built-in model size '{size}'; use one of {', '.join(_PRESETS)}")
    name, overrides, shape = _PRESETS[size]
    from transformers import LlavaOnevisionForConditionalGeneration

    from .tokenizer import load_tokenizer

    if tokenizer is None:
        tokenizer, tok_desc = load_tokenizer("llava_onevision")
    else:
        tok_desc = type(tokenizer).__name__
    cfg = default_model_config(
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        **{k: dict(v) for k, v in overrides.items()},
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    desc = f"{name} (LLaVA-OneVision architecture, {shape}{n / 1e6:.1f} M parameters, RANDOM weights: answers are noise)"
    return LoadedModel(model, tokenizer, desc, tok_desc, random_weights=True)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")
"""What ``from_pretrained`` reads a tokenizer from; named in the error when none is usable."""

BUILTIN_MODELS = (
    "builtin",
    "builtin-medium",
    "builtin-bench",
    "builtin-qwen",
    "builtin-qwen3",
    "builtin-llava-next-video",
)
"""Every ``--model`` name that builds a random-weight model; the last three are the other
targets' (see :mod:`.builtin_models`)."""


def looks_like_path(name: str) -> bool:
    """True when ``name`` can only be a local path, never a hub id (``org/name``): it is absolute,
    starts with ``.`` or ``~``, ends with a separator, or has more than two parts."""
    seps = os.sep + (os.altsep or "")
    parts = re.split(f"[{re.escape(seps)}]", name)
    return name.startswith((".", "~", *seps)) or name.endswith(tuple(seps)) or len(parts) > 2


def load_model(
    name_or_path: str | None,
    dtype: torch.dtype = torch.float32,
    tokenizer: str | None = None,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """``None`` or ``builtin`` → the built-in model, ``builtin-medium`` / ``builtin-bench`` → its
    real-width presets, ``builtin-qwen`` / ``builtin-qwen3`` / ``builtin-llava-next-video`` → the
    other targets' built-in models; anything else goes through ``from_pretrained``. ``tokenizer`` (a hub id or
    directory) replaces the checkpoint's own tokenizer, for checkpoints saved without one.
    ``with_tokenizer=False`` loads a checkpoint without looking for its tokenizer at all
    (``tokenizer`` is None then): checking a pipeline against a model needs none."""
    tok = _explicit_tokenizer(tokenizer) if tokenizer is not None else None
    if name_or_path is not None and name_or_path.startswith("builtin"):
        from .builtin import build_builtin_target_model, is_builtin_target_model

        if is_builtin_target_model(name_or_path):
            built = build_builtin_target_model(name_or_path, tokenizer=tok, source=tokenizer)
            return LoadedModel(*built, random_weights=True)
    for names, size in (
        (("builtin", DEFAULT_NAME), "tiny"),
        (("builtin-medium", MEDIUM_NAME), "medium"),
        (("builtin-bench", BENCH_NAME), "bench"),
    ):
        if name_or_path is None and size == "tiny" or name_or_path in names:
            if tok is None:
                return build_default_model() if size == "tiny" else build_default_model(size=size)
            _check_placeholders(tok[0], tokenizer or "")
            loaded = build_default_model(tokenizer=tok[0], size=size)
            loaded.tokenizer_description = tok[1]
            return loaded
    from transformers import AutoConfig, AutoModelForImageTextToText

    assert name_or_path is not None
    path = Path(name_or_path)
    if looks_like_path(name_or_path) and not path.exists():
        raise TokenCompressError(
            f"--model {name_or_path}: folder does not exist; give a checkpoint folder or a hub id (org/name)"
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, config=config, dtype=dtype).eval()
    except Exception as exc:  # a broken checkpoint must read as one line, whatever raised
        where = "directory" if path.exists() else "model id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenCompressError(f"cannot load model {where} '{name_or_path}': {first}") from None
    notes: tuple[str, ...] = ()
    if tok is not None:
        _check_fits(tok[0], model, f"--tokenizer {tokenizer}")
        tokenizer_obj, tok_desc = tok
    elif not with_tokenizer:
        tokenizer_obj, tok_desc = None, "not loaded (none needed)"
    else:
        tokenizer_obj, tok_desc, notes = _tokenizer_for(name_or_path, model)
    n = sum(p.numel() for p in model.parameters())
    desc = f"{name_or_path} ({type(model).__name__}, {n / 1e6:.1f} M parameters)"
    return LoadedModel(model, tokenizer_obj, desc, tok_desc, random_weights=False, notes=notes)


def _looked_for() -> str:
    return ", ".join(TOKENIZER_FILES)


def _unusable(tok: Any) -> str | None:
    """Why ``tok`` cannot tokenize a question, or None. ``from_pretrained`` happily builds a
    tokenizer from a bare ``tokenizer_config.json``: it has no vocabulary and encodes all to []."""
    try:
        ids = tok("What happens in the video?", add_special_tokens=False)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        return f"it fails on plain text ({type(exc).__name__})"
    if not ids:
        return f"{type(tok).__name__} with {len(tok)} token(s) encodes text to no ids"
    return None


def _explicit_tokenizer(source: str) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - one line whatever raised
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenCompressError(
            f"--tokenizer {source}: cannot load a tokenizer ({first}); give a directory holding "
            f"{_looked_for()} or a hub id"
        ) from None
    why = _unusable(tok)
    if why is not None:
        raise TokenCompressError(
            f"--tokenizer {source}: unusable tokenizer ({why}); give a directory holding tokenizer.json "
            "(or vocab.json + merges.txt) or a hub id"
        )
    return tok, f"{type(tok).__name__} from {source} (--tokenizer)"


def _check_placeholders(tok: Any, source: str) -> None:
    """The built-in model sizes its vocabulary from the tokenizer and needs its media tokens."""
    for token in ("<image>", "<video>"):
        tid = tok.convert_tokens_to_ids(token)
        if tid is None or tid == tok.unk_token_id:
            raise TokenCompressError(
                f"--tokenizer {source}: has no {token} token, which the built-in (LLaVA-OneVision) model "
                "needs; leave --tokenizer out for the built-in model"
            )


def _check_fits(tok: Any, model: nn.Module, what: str) -> None:
    vocab = model.config.get_text_config().vocab_size
    if len(tok) > vocab:
        raise TokenCompressError(
            f"{what}: the tokenizer has {len(tok)} tokens, more than the model's vocabulary ({vocab}); "
            "give the tokenizer the checkpoint was trained with"
        )


def _ships_no_tokenizer(name_or_path: str) -> bool:
    """A local checkpoint directory with none of :data:`TOKENIZER_FILES` (``save_pretrained`` of a
    model alone). ``AutoTokenizer`` would still build an empty tokenizer there for some model
    types (Qwen2-VL: from the config's ``model_type``), which must not count as the checkpoint's."""
    path = Path(name_or_path)
    return path.is_dir() and not any((path / f).exists() for f in TOKENIZER_FILES)


def _tokenizer_for(name_or_path: str, model: nn.Module) -> tuple[Any, str, tuple[str, ...]]:
    """The checkpoint's own tokenizer if it ships a usable one, else the offline Qwen2 one if ids
    fit (with a note saying so)."""
    from transformers import AutoTokenizer

    from .tokenizer import load_tokenizer

    try:
        if _ships_no_tokenizer(name_or_path):
            raise OSError("no tokenizer files")
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    else:
        why = _unusable(tok)
        if why is None:
            return tok, f"{type(tok).__name__} from {name_or_path}", ()
        raise TokenCompressError(
            f"model '{name_or_path}' has no usable tokenizer ({why}; looked for {_looked_for()}); "
            "pass --tokenizer PATH_OR_ID, or save the tokenizer next to the weights"
        )
    layout = _tokenizer_layout(model)
    tok, desc = load_tokenizer(layout)
    vocab = model.config.get_text_config().vocab_size
    if len(tok) > vocab:
        raise TokenCompressError(
            f"model '{name_or_path}' ships no tokenizer (looked for {_looked_for()}) and its vocabulary "
            f"({vocab}) is smaller than the fallback tokenizer's ({len(tok)}); pass --tokenizer PATH_OR_ID, "
            "or save the tokenizer next to the weights"
        )
    note = (
        f"{name_or_path} ships no tokenizer files (looked for {_looked_for()}); using the offline "
        f"tokenizer with {layout} placeholders instead (pass --tokenizer PATH_OR_ID for the checkpoint's own)"
    )
    return tok, desc, (note,)


def _tokenizer_layout(model: nn.Module) -> str:
    """The placeholder layout of the target that runs ``model`` (the registry knows; core does not)."""
    from ..plugins.registry import Registry

    try:
        return Registry().resolve_target(model).tokenizer_layout
    except TokenCompressError:
        return "llava_onevision"  # no target runs it: any pipeline will refuse it with a clear error
