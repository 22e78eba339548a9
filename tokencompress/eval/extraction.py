"""Answer extraction rules of the benchmarks' scorers, as pure functions on the raw response.

Each rule is what one official scorer does, quirks included: the harness must reproduce published
numbers before it can claim a retention. The rule names are the ``score_kind`` values of
:class:`~tokencompress.eval.records.Query`. :func:`answer_extraction` is the stable entry point
other integrations call.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

__all__ = [
    "answer_extraction",
    "count_digits",
    "first_char",
    "last_line",
    "mcq_extract",
    "mmmu_parse",
    "rekv_paren",
    "strict_letter",
    "strict_yes_no",
]

LETTERS = string.ascii_uppercase


def last_line(response: str) -> str:
    """STC keeps only the last line of an OVO answer before scoring (quirk 14)."""
    lines = response.strip().split("\n")
    return lines[-1] if lines else ""


def first_char(response: str | None) -> str:
    """StreamingBench official: the first character, so a leading space is the answer (quirk 7)."""
    return response[0] if response else ""


def count_digits(response: str | None) -> str:
    """OVO REC: every digit run concatenated ("1, 2" → "12", quirk 2)."""
    return "".join(re.findall(r"\d+", response or ""))


_PUNCT_EDGE = " \t\n\r.,;:!?'\"`*"

# (priority, pattern): a higher priority wins; within one, the last match in the text wins.
_MCQ_FORMATS = (
    (10, r"^{L}(?![A-Za-z0-9])"),
    (9, r"(?<![A-Za-z0-9]){L}$"),
    (
        7,
        r"(?i:the\s+(?:best\s+|correct\s+|right\s+)?(?:answer|option|choice)\s+is|answer\s*:|best\s+option\s*:)\s*\(?{L}(?![A-Za-z0-9])",
    ),
    (6, r"\({L}\)"),
    (5, r"(?<![A-Za-z0-9]){L}\."),
    (4, r"(?<![A-Za-z0-9]){L}:"),
    (3, r"(?<![A-Za-z0-9]){L}\)"),
    (2, r"(?<![A-Za-z0-9]){L} "),
    (0, r"(?<![A-Za-z0-9]){L}(?![A-Za-z0-9])"),
)


def mcq_extract(response: str | None, choices: Sequence[str] = ("A", "B", "C", "D")) -> str:
    """lmms-eval 0.7.x multiple-choice extraction: the candidate format of highest priority,
    its last occurrence; ``""`` when no choice letter appears (scored wrong)."""
    text = (response or "").strip(_PUNCT_EDGE)
    if not text:
        return ""
    letters = "".join(re.escape(c) for c in choices)
    group = f"([{letters}])"
    for _, fmt in _MCQ_FORMATS:
        found = list(re.finditer(fmt.replace("{L}", group), text))
        if found:
            return found[-1].group(1)
    return ""


def strict_letter(response: str | None, choices: Sequence[str]) -> str:
    """Strict mode for OVO MC: the letter the answer actually names (no substring credit)."""
    return mcq_extract(response, choices)


def strict_yes_no(response: str | None) -> str:
    """Strict mode for OVO SSR/CRR: the leading word, case-folded, must be yes or no."""
    m = re.match(r"\s*([A-Za-z]+)", response or "")
    word = m.group(1).lower() if m else ""
    return {"yes": "Yes", "y": "Yes", "no": "No", "n": "No"}.get(word, "")


def mmmu_parse(
    response: str | None, options: Sequence[str], rng: random.Random | None = None
) -> tuple[str, bool]:
    """EgoSchema (lmms-eval) parser → (letter, guessed).

    Candidates are "(X)", "X " and "X." forms; with none and a long answer, option texts found
    in the response; of several, the one whose last occurrence comes first. Nothing found falls
    back to a random letter (quirk 18), drawn from ``rng`` so a seeded run is reproducible.
    """
    letters = list(LETTERS[: len(options)])
    text = " " + (response or "").strip().strip(",.!?;:'\"") + " "
    found: dict[str, int] = {}
    for letter in letters:
        positions = [text.rfind(f"({letter})"), text.rfind(f" {letter} "), text.rfind(f" {letter}.")]
        pos = max(positions)
        if pos >= 0:
            found[letter] = pos
    if not found and len(text.split()) > 5:
        low = text.lower()
        for letter, option in zip(letters, options, strict=True):
            body = _strip_option_prefix(option).lower()
            if body and body in low:
                found[letter] = low.rfind(body)
    if found:
        return min(found, key=lambda k: found[k]), False
    return (rng or random.Random(0)).choice(letters), True


def _strip_option_prefix(option: str) -> str:
    return re.sub(r"^\s*\(?[A-Z][.):]\s*", "", option)


def rekv_paren(response: str | None) -> str:
    """ReKV / STC offline: the character before the first ")" of the stripped output, else the
    first character (the prompt ends in "Best option: (")."""
    s = (response or "").strip()
    if not s:
        return ""
    cut = s.find(")")
    return s[cut - 1] if cut > 0 else s[0]


def answer_extraction(kind: str, response: str | None, **kw: object) -> str:
    """The extracted answer of ``response`` under rule ``kind`` (a ``score_kind`` name).

    ``mc_substring``/``mc_first_char``/``mc_strip_equal`` need nothing else; ``mcq_extract``
    takes ``choices``; ``mmmu_parse`` takes ``options`` (and an optional ``rng``).
    """
    if kind == "mc_first_char":
        return first_char(response)
    if kind == "mc_strip_equal":
        return (response or "").strip()
    if kind == "count_digits":
        return count_digits(response)
    if kind == "mcq_extract":
        return mcq_extract(response, kw.get("choices", ("A", "B", "C", "D")))  # type: ignore[arg-type]
    if kind == "mmmu_parse":
        return mmmu_parse(response, kw["options"], kw.get("rng"))[0]  # type: ignore[arg-type]
    if kind == "rekv_paren":
        return rekv_paren(response)
    if kind in ("mc_substring", "yes_no_ovo"):
        return (response or "").strip()
    raise ValueError(f"unknown score_kind '{kind}'")
