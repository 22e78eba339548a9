"""The declarative tables behind the synthetic OVO-Bench set: videos, queries, scripted answers,
frame counts."""

from __future__ import annotations

from typing import Any

__all__ = ["BIKES", "CAR", "BBB", "OVO_VIDEOS", "OVO_TABLE", "OVO_RESPONSES", "OVO_CLIP_FRAMES", "OVO_FRAMES"]

BIKES, CAR, BBB = "bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"
OVO_VIDEOS = {
    BIKES: "Ego4D/clips/synth-bikes.mp4",
    CAR: "COIN/synth_carphone.mp4",
    BBB: "YouTube_Games/PLsynth&index=1.mp4",
}

# id, task, clip, realtime or probes, extra fields
OVO_TABLE: list[tuple[int, str, str, Any, dict[str, Any]]] = [
    (
        0,
        "EPM",
        BIKES,
        3.2,
        {
            "question": "What passed the camera first?",
            "answer": "a cyclist in red",
            "options": ["a bus", "a dog", "a cyclist in red", "a tram"],
            "gt": 2,
        },
    ),
    (
        1,
        "HLD",
        BIKES,
        9,
        {
            "question": "What colour is the sky?",
            "answer": "Unable to answer",
            "options": ["green", "Unable to answer", "red", "blue"],
            "gt": 1,
        },
    ),
    (
        2,
        "ASI",
        CAR,
        2.5,
        {
            "question": "What happened first ",
            "answer": "he lifted the phone",
            "options": ["lift the phone", "drive off", "wave"],
            "gt": 0,
        },
    ),
    (
        3,
        "STU",
        BBB,
        4,
        {
            "question": "Where is the rabbit?",
            "answer": "on the grass",
            "options": ["in a tree", "in the sky", "under water", "on the grass"],
            "gt": 3,
        },
    ),
    (
        4,
        "OJR",
        BBB,
        0.03,
        {
            "question": "What is on screen?",
            "answer": "a title",
            "options": ["a title", "a car", "a boat", "a cat"],
            "gt": 0,
        },
    ),
    (
        5,
        "ATR",
        BIKES,
        12.5,
        {
            "question": "What colour is the last bike?",
            "answer": "blue",
            "options": ["red", "blue", "black", "white"],
            "gt": 1,
        },
    ),
    (
        6,
        "ACR",
        CAR,
        4.0,
        {
            "question": "What is the man doing?",
            "answer": "talking",
            "options": ["talking", "eating", "sleeping", "running"],
            "gt": 0,
        },
    ),
    (
        7,
        "OCR",
        BIKES,
        5.5,
        {
            "question": "What does the sign say?",
            "answer": "stop",
            "options": ["go", "slow; down", "park", "exit", "stop"],
            "gt": 4,
        },
    ),
    (
        8,
        "FPD",
        BBB,
        2.0,
        {
            "question": "What happens next?",
            "answer": "he wakes up",
            "options": ["A baker man arrives", "he wakes up"],
            "gt": 1,
        },
    ),
    (
        9,
        "REC",
        BIKES,
        [3, 7, 9.5],
        {"activity": "ride past the camera", "start_times": [0, 4], "end_times": [3, 7], "counts": [1, 2, 2]},
    ),
    (
        10,
        "SSR",
        CAR,
        [1, 3, 1, 2.5],
        {
            "tutorial": "SyntheticCall",
            "all_steps": ["lift the phone", "talk"],
            "start_time": [0, 2],
            "end_time": [1, 3],
            "steps": ["lift the phone", "lift the phone", "talk", "talk"],
            "types": [1, 0, 0, 1],
        },
    ),
    (
        11,
        "CRR",
        BBB,
        [1, 2, 3, 5],
        {
            "question": "What does the rabbit hold after waking up?",
            "answer": "nothing",
            "ask_time": 1,
            "clue_time": 3,
            "types": [0, 0, 1, 1],
        },
    ),
]
OVO_RESPONSES: dict[str, str | None] = {
    "0": "C", "1": "b", "2": "B. A tire", "3": "The answer is D.", "4": None, "5": "C", "6": "A", "7": "E", "8": "A",
    "9_0": "1", "9_1": "2 times", "9_2": "1, 2",
    "10_0": "Yes", "10_1": "N", "10_2": "yes", "10_3": "Yes.",
    "11_0": "No", "11_1": "Y", "11_2": "Yes", "11_3": None,
}  # fmt: skip
OVO_CLIP_FRAMES = {
    "0": 100, "1": 225, "2": 90, "3": 100, "4": 25, "5": 250, "6": 120, "7": 150, "8": 50,
    "9_0": 75, "9_1": 175, "9_2": 250, "10_0": 30, "10_1": 90, "10_2": 30, "10_3": 90,
    "11_0": 25, "11_1": 50, "11_2": 75, "11_3": 125,
}  # fmt: skip
OVO_FRAMES = {
    1.0: {"0": 4, "1": 9, "2": 3, "3": 4, "4": 1, "5": 10, "6": 4, "7": 6, "8": 2, "9_0": 3, "9_1": 7, "9_2": 10,
          "10_0": 1, "10_1": 3, "10_2": 1, "10_3": 3, "11_0": 1, "11_1": 2, "11_2": 3, "11_3": 5},
    0.5: {"0": 2, "1": 5, "2": 2, "3": 2, "4": 1, "5": 5, "6": 2, "7": 3, "8": 1, "9_0": 2, "9_1": 4, "9_2": 5,
          "10_0": 1, "10_1": 2, "10_2": 1, "10_3": 2, "11_0": 1, "11_1": 1, "11_2": 2, "11_3": 3},
}  # fmt: skip
