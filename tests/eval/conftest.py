"""Synthetic benchmark sets (built once per session) and the built-in tiny model."""

from __future__ import annotations

import pytest

from tokencompress.eval.synthetic import build


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """kind -> manifest; OVO's 20 chunk files included."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        k: build(k, root / k)
        for k in ("ovo-bench", "streamingbench", "videomme", "mlvu", "egoschema", "rekv")
    }


@pytest.fixture(scope="session")
def builtin_model():
    from tokencompress.models.loading import load_model

    return load_model(None)
