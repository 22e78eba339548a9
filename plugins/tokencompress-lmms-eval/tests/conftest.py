"""The plugin's tests run from the main checkout's test command, where the plugin (and lmms-eval)
need not be installed: its import-light modules are taken from this copy's ``src``, and
everything that needs lmms-eval runs in the venv of ``lmms_venv``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmms_venv import IndexUnreachable, default_venv, ensure_venv, install_plugin, venv_env  # noqa: E402

from tokencompress.testing.side_env import SideEnvError  # noqa: E402


@dataclass(frozen=True)
class LmmsEnv:
    python: Path
    plugin: Path  # this checkout's plugin, installed with its entry points; first on PYTHONPATH

    @property
    def cli(self) -> str:
        return str(self.python.parent / "lmms-eval")

    def env(self, **extra: str) -> dict[str, str]:
        return venv_env(self.plugin, **extra)


@pytest.fixture(scope="session")
def lmms(tmp_path_factory: pytest.TempPathFactory) -> LmmsEnv:
    """lmms-eval's venv (``TOKENCOMPRESS_LMMS_VENV=DIR`` to choose where it is kept) and the plugin."""
    where = os.environ.get("TOKENCOMPRESS_LMMS_VENV")
    try:
        python = ensure_venv(Path(where) if where else default_venv())
    except IndexUnreachable as exc:
        pytest.skip(f"lmms-eval checks need the package index to build their venv: {exc}")
    except SideEnvError as exc:  # it would need a torch of its own: refused, nothing downloaded
        pytest.fail(str(exc), pytrace=False)
    return LmmsEnv(python, install_plugin(python, tmp_path_factory.mktemp("lmms-plugin")))
