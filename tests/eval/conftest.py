"""Synthetic benchmark sets, built once per session (the built-in model is tests/conftest.py's)."""

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
