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

from lmms_venv import IndexUnreachable, default_venv, ensure_venv, install_plugin, is_built, venv_env  # noqa: E402

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
def lmms(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LmmsEnv:
    """lmms-eval's venv (``TOKENCOMPRESS_LMMS_VENV=DIR`` to choose where it is kept) and the plugin.

    Building it downloads lmms-eval and its extra (~90 MB, never a torch), so a run builds it only
    when asked (``--build-side-envs``; ``.ci/run`` asks); otherwise these tests skip with one line.
    """
    where = os.environ.get("TOKENCOMPRESS_LMMS_VENV")
    venv = Path(where) if where else default_venv()
    if not is_built(venv) and not request.config.getoption("--build-side-envs", default=False):
        pytest.skip(
            f"the lmms-eval side environment is not built ({venv}); building it downloads lmms-eval (~90 MB): "
            "run `python -m pytest -c pyproject.toml --build-side-envs plugins/tokencompress-lmms-eval` once"
        )
    try:
        python = ensure_venv(venv)
    except IndexUnreachable as exc:
        pytest.skip(f"lmms-eval checks need the package index to build their venv: {exc}")
    except SideEnvError as exc:  # it would need a torch of its own: refused, nothing downloaded
        pytest.fail(str(exc), pytrace=False)
    return LmmsEnv(python, install_plugin(python, tmp_path_factory.mktemp("lmms-plugin")))
