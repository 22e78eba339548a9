"""Options of the whole test run (this file sits at the rootdir so pytest reads it at startup)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--build-side-envs",
        action="store_true",
        help=(
            "build the side environments some plugin tests run in (lmms-eval: ~90 MB from the package "
            "index, never a torch) when they are not built yet; without it those tests skip with one line, "
            "so the default test run downloads nothing"
        ),
    )
