"""Running the command line in process and reading what it printed."""

from __future__ import annotations

import re

import pytest

from tokencompress.cli.main import main

ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)→(\d+)\s+(\d+)→(\d+)\s")
"""One live row of ``run``: seven integers, the last two pairs printed as ``before→after`` token counts."""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``tokencompress *argv``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """A user mistake: exit 2, no traceback, one ``error:`` line holding every needle; returns it."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
