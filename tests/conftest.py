"""Shared fixtures: the tiny random-weight models and the built-in model, built once per session;
the plain builders they call live in tests/support/models.py."""

from __future__ import annotations

import pytest

from tests.support.models import build_tiny_llava_ov, random_frames


@pytest.fixture(scope="session")
def tiny_llava_ov():
    return build_tiny_llava_ov()


@pytest.fixture
def frames():
    return random_frames(6)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny LLaVA-OV saved with a byte tokenizer, for CLI runs that must stay fast."""
    from tokencompress.models.tokenizer import byte_tokenizer

    path = tmp_path_factory.mktemp("tiny-llava-ov")
    build_tiny_llava_ov().save_pretrained(path)
    byte_tokenizer("llava_onevision").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def builtin_model():
    """The built-in model (``tokencompress.models.loading.build_default_model``: LLaVA-OV geometry,
    196 pooled tokens per frame), built once: tests that run the command line hand it to every
    command by monkeypatching ``build_default_model`` to return it. Shared safely because a
    pipeline's ``apply()`` restores the model on exit and nothing else writes to it."""
    from tokencompress.models.loading import build_default_model

    return build_default_model()
