"""Per-call scores: a query's ``score_kind`` and the scorer mode → (extracted answer, score).

``official`` reproduces the benchmark authors' scorer, quirks included; ``stc`` the modified scorers
STC's numbers come from; ``lmms`` lmms-eval's copy where it differs; ``strict`` a clean reading that
gives no credit for a letter that merely occurs. A score of ``None`` means "not counted" (lmms-eval
skips failed OVO forward probes).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from ..api.errors import TokenCompressError
from .extraction import (
    LETTERS,
    count_digits,
    first_char,
    last_line,
    mcq_extract,
    mmmu_parse,
    rekv_paren,
    strict_letter,
    strict_yes_no,
)
from .records import Query

__all__ = ["MODES", "check_mode", "score_call", "score_proactive"]

MODES: dict[str, tuple[str, ...]] = {
    "ovo-bench": ("official", "strict", "lmms", "stc"),
    "streamingbench": ("official", "stc", "strict"),
    "videomme": ("official", "stc"),
    "mlvu": ("official", "stc"),
    "egoschema": ("official", "stc"),
}
"""Scorer modes per benchmark; the first is the default."""

FORWARD = ("count_digits", "yes_no_ovo")


def check_mode(bench: str, mode: str) -> None:
    if mode not in MODES[bench]:
        raise TokenCompressError(
            f"--scoring {mode} is not a scorer of {bench}; choose one of {', '.join(MODES[bench])}"
        )


def score_call(
    query: Query, response: str | None, mode: str = "official", rng: Any = None
) -> tuple[str, Any]:
    """(extracted, score) for one call; ``response`` ``None`` is an inference error (scored 0)."""
    kind, gt = query.score_kind, query.gt
    if response is None:
        if mode == "lmms" and kind in FORWARD:
            return "", None
        return "", 0
    if mode == "stc" and query.bench == "ovo-bench":
        response = last_line(response)
    if kind == "mc_substring":
        letter = LETTERS[gt]
        if mode == "strict":
            ext = strict_letter(response, LETTERS[: len(query.options)])
            return ext, int(ext == letter)
        text = response.strip() if mode == "lmms" else response
        return (letter if letter in text else mcq_extract(text, LETTERS[: len(query.options)])), int(
            letter in text
        )
    if kind == "count_digits":
        if mode == "strict":
            m = re.search(r"\d+", response)
            ext = m.group(0) if m else ""
        else:
            ext = count_digits(response)
        return ext, int(ext == str(gt))
    if kind == "yes_no_ovo":
        if mode == "strict":
            ext = strict_yes_no(response)
            return ext, int(ext == ("Yes" if gt == 1 else "No"))
        return _ovo_yes_no(response, gt)
    if kind == "mc_first_char":
        if mode == "stc":
            ext = response.strip()
        elif mode == "strict":
            ext = mcq_extract(response, LETTERS[:4])
        else:
            ext = first_char(response)
        return ext, int(ext == gt)
    if kind == "mcq_extract":
        ext = rekv_paren(response) if mode == "stc" else mcq_extract(response, _choices(query.options))
        return ext, int(ext == gt)
    if kind == "mmmu_parse":
        if mode == "stc":
            ext = rekv_paren(response)
        else:
            ext, _ = mmmu_parse(response, query.options, rng if rng is not None else random.Random(0))
        return ext, int(ext in LETTERS and str(LETTERS.index(ext)) == str(gt))
    if kind == "rekv_paren":
        ext = rekv_paren(response)
        return ext, int(ext == gt)
    raise TokenCompressError(f"query {query.qid}: unknown score_kind '{kind}'")


def _choices(options: Sequence[str]) -> str:
    return LETTERS[: len(options)] if options else LETTERS[:4]


def _ovo_yes_no(response: str, gt: int) -> tuple[str, int]:
    """OVO SSR/CRR: bare "N"/"Y", or the case-sensitive "No"/"Yes" substring (quirk 3)."""
    if gt == 0:
        hit = response == "N" or "No" in response
        return ("No" if hit else ("Yes" if response == "Y" or "Yes" in response else "")), int(hit)
    hit = response == "Y" or "Yes" in response
    return ("Yes" if hit else ("No" if response == "N" or "No" in response else "")), int(hit)


def poll_says_yes(response: str | None) -> bool:
    """StreamingBench proactive trigger: case-insensitive substring (so "yesterday" fires, quirk 12)."""
    return response is not None and "yes" in response.strip().lower()


def score_proactive(dialog: list[dict[str, Any]], gt_time: float, gt_output: str) -> dict[str, int]:
    """Time and answer correctness from the **last** turn of the dialog."""
    last = dialog[-1] if dialog else None
    if last is None:
        return {"time": 0, "answer": 0}
    time_ok = abs(float(last["time"]) - float(gt_time)) <= 2
    content = last.get("content") or ""
    return {"time": int(time_ok), "answer": int(time_ok and str(gt_output) in content)}
