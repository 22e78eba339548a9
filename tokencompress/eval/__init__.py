"""Accuracy evaluation: benchmark loaders, protocols, scorers and retention (``tokencompress eval``).

Stable entry points for other integrations: :func:`answer_extraction` (a benchmark rule applied
to a raw response), :func:`score_call` (one call's score under a scorer mode), :func:`aggregate`
and :func:`retention` (benchmark formulas), :class:`Query`.
"""

from .aggregate import aggregate, retention
from .extraction import answer_extraction
from .records import Loaded, Poll, Query
from .scoring import MODES, score_call, score_proactive

__all__ = [
    "MODES",
    "Loaded",
    "Poll",
    "Query",
    "aggregate",
    "answer_extraction",
    "retention",
    "score_call",
    "score_proactive",
]
