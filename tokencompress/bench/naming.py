"""The file stem of a benchmark's results, made from the pipeline's ``name``.

A pipeline name is free text; the stem is what ``bench`` writes as ``<stem>.json``/``.png``
(and ``<stem>_sweep.*``) in ``--out``. Characters other than ``A-Z a-z 0-9 . _ -`` become ``_``
(no path separators, no control characters), a leading ``.`` becomes ``_`` (no hidden files, no
``..``), and a stem longer than :data:`MAX_STEM` characters is cut and given an 8-digit hash of
the full name, so it fits every file system's 255-byte name limit with its suffix and two long
names that share a beginning still get two files.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_STEM", "result_stem"]

MAX_STEM = 100
"""Characters of a results file stem, suffixes excluded (well under the 255-byte name limit)."""


def result_stem(name: str) -> str:
    """A safe, bounded file stem for pipeline ``name`` (``pipeline`` when nothing is left)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    stem = re.sub(r"^\.", "_", stem) or "pipeline"
    if len(stem) <= MAX_STEM:
        return stem
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem[: MAX_STEM - 9]}-{digest}"
