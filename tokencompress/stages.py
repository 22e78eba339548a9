"""The stages of a pipeline (kept as an import path; the definitions live in :mod:`tokencompress.types`)."""

from .types import Stage, StageInfo

__all__ = ["Stage", "StageInfo"]
