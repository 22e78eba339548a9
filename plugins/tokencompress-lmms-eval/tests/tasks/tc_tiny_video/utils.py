"""Prompt, visuals and scoring of the tiny test task (test-only: real benchmarks are scored by
``tokencompress.eval``)."""

from __future__ import annotations


def doc_to_visual(doc: dict) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    post = (lmms_eval_specific_kwargs or {}).get("post_prompt", "")
    lines = [
        doc["question"],
        *(f"{letter}. {text}" for letter, text in zip("ABCDEFGH", doc["options"], strict=False)),
        post,
    ]
    return "\n".join(line for line in lines if line)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    answer = results[0].strip()
    return {"accuracy": float(answer[:1].upper() == doc["answer"])}
