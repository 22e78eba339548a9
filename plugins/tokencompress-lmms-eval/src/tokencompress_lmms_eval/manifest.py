"""The ``lmms_eval.models`` entry point.

lmms-eval loads every entry point of the group inside one ``try``: one that raises makes it
skip the rest, so this module stays import-light (only lmms-eval's own registry module, which
is already loaded when lmms-eval calls us).
"""

from __future__ import annotations

from . import MODEL_CLASS_PATH, MODEL_ID


def manifests() -> list:
    """The model lmms-eval resolves ``--model tokencompress`` to (called by lmms-eval)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS_PATH)]
