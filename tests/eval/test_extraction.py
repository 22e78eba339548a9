"""Every scorer rule of OVO-Bench, StreamingBench and the offline benchmarks as a table, quirks
included where they decide."""

from __future__ import annotations

import random

import pytest

from tokencompress.eval import answer_extraction, score_call
from tokencompress.eval.extraction import mcq_extract, mmmu_parse, rekv_paren
from tokencompress.eval.records import Query
from tokencompress.eval.scoring import poll_says_yes, score_proactive


def q(bench, kind, gt, options=("a", "b", "c", "d")):
    return Query(bench, "T", "C", "x", "v.mp4", (0.0, 1.0), "p", kind, gt, 0, options=tuple(options))


OVO = [
    # (score_kind, gt, response, mode, score)
    ("mc_substring", 0, "B. A tire", "official", 1),  # quirk 1: the letter A occurs
    ("mc_substring", 0, "B. A tire", "strict", 0),
    ("mc_substring", 1, "b", "official", 0),  # case-sensitive
    ("mc_substring", 3, "The answer is D.", "official", 1),
    ("mc_substring", 3, "The answer is D.", "strict", 1),
    ("mc_substring", 0, None, "official", 0),  # an inference error scores 0
    ("mc_substring", 0, None, "lmms", 0),  # MC errors count 0 in lmms-eval too
    ("mc_substring", 2, "thinking...\nC", "stc", 1),  # STC keeps the last line
    ("mc_substring", 2, "C\nthinking", "stc", 0),
    ("count_digits", 2, "2 times", "official", 1),
    ("count_digits", 2, "1, 2", "official", 0),  # quirk 2: "12" != "2"
    ("count_digits", 2, "1, 2", "strict", 0),
    ("count_digits", 1, "1, 2", "strict", 1),
    ("count_digits", 1, "1", "official", 1),
    ("yes_no_ovo", 1, "Yes", "official", 1),
    ("yes_no_ovo", 0, "N", "official", 1),
    ("yes_no_ovo", 0, "yes", "official", 0),  # quirk 3: lowercase gets nothing
    ("yes_no_ovo", 1, "yes", "official", 0),
    ("yes_no_ovo", 1, "yes", "strict", 1),
    ("yes_no_ovo", 1, "Yes.", "official", 1),
    ("yes_no_ovo", 0, "Not sure", "official", 1),  # quirk 3: counts as "No"
    ("yes_no_ovo", 0, "Not sure", "strict", 0),
    ("yes_no_ovo", 0, "Y", "official", 0),
    ("yes_no_ovo", 1, None, "official", 0),
    ("yes_no_ovo", 1, None, "lmms", None),  # quirk 6: lmms-eval skips failed forward probes
]


@pytest.mark.parametrize("kind,gt,response,mode,expected", OVO)
def test_ovo_rules(kind, gt, response, mode, expected):
    assert score_call(q("ovo-bench", kind, gt), response, mode)[1] == expected


SB = [
    ("A", "A", "official", 1),
    (" B", "B", "official", 0),  # quirk 7: the first character is a space
    (" B", "B", "stc", 1),
    ("C.", "C", "official", 1),
    ("C.", "C", "stc", 0),
    ("", "A", "official", 0),
    (None, "A", "official", 0),
    (" The best option is B", "B", "strict", 1),
]


@pytest.mark.parametrize("response,gt,mode,expected", SB)
def test_streamingbench_rules(response, gt, mode, expected):
    assert score_call(q("streamingbench", "mc_first_char", gt), response, mode)[1] == expected


MCQ = [
    ("B", "B"),
    ("The best answer is (C).", "C"),
    ("I cannot tell", ""),
    ("(D) because of the bus", "D"),
    ("Answer: A", "A"),
    ("a dog", ""),
]


@pytest.mark.parametrize("response,letter", MCQ)
def test_mcq_extract(response, letter):
    assert mcq_extract(response) == letter


def test_mcq_priorities():
    # a letter standing alone at the start outranks one at the end, which outranks "(X)" in the middle
    assert mcq_extract("A is wrong, (B) is right, so C") == "A"
    assert mcq_extract("so it is (B) or maybe C") == "C"
    assert mcq_extract("maybe (B) or (C) here") == "C"  # same format: the last one wins


def test_mmmu_parse():
    opts = ["A. to cook", "B. to clean", "C. to ride", "D. to read", "E. to call"]
    assert mmmu_parse("C", opts) == ("C", False)
    assert mmmu_parse("I think (E)", opts) == ("E", False)
    assert mmmu_parse("the person wants mostly to ride a bike today", opts) == ("C", False)  # option text
    letter, guessed = mmmu_parse("no idea", opts, random.Random(0))
    assert guessed and letter in "ABCDE"
    assert mmmu_parse("no idea", opts, random.Random(0)) == mmmu_parse("no idea", opts, random.Random(0))


def test_egoschema_scores_the_index():
    opts = ["A. x", "B. y", "C. z", "D. w", "E. v"]
    assert score_call(q("egoschema", "mmmu_parse", "2", opts), "C")[1] == 1
    assert score_call(q("egoschema", "mmmu_parse", "4", opts), "I think (E)")[1] == 1
    assert score_call(q("egoschema", "mmmu_parse", "4", opts), "C")[1] == 0


@pytest.mark.parametrize(
    "response,letter", [("B) bikes", "B"), ("C", "C"), (" A) x", "A"), ("", ""), ("xy)z", "y")]
)
def test_rekv_paren(response, letter):
    assert rekv_paren(response) == letter


def test_answer_extraction_entry_point():
    assert answer_extraction("mc_first_char", " B") == " "
    assert answer_extraction("count_digits", "1, 2") == "12"
    assert answer_extraction("mcq_extract", "(C)") == "C"
    assert answer_extraction("rekv_paren", "D) four") == "D"
    with pytest.raises(ValueError):
        answer_extraction("nope", "A")


def test_proactive_trigger_and_score():
    assert poll_says_yes("yesterday")  # quirk 12: case-insensitive substring
    assert poll_says_yes(" YES ")
    assert not poll_says_yes("No")
    assert not poll_says_yes(None)
    dialog = [
        {"role": "assistant", "content": "No", "time": 3},
        {"role": "assistant", "content": "it is 2", "time": 6},
    ]
    assert score_proactive(dialog, 5, "2") == {"time": 1, "answer": 1}
    assert score_proactive(dialog, 9, "2") == {"time": 0, "answer": 0}  # the last turn decides
    assert score_proactive(dialog[:1], 5, "2") == {"time": 1, "answer": 0}
