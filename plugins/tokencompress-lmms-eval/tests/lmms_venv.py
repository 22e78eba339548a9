"""lmms-eval beside the project's environment, installed the way the plugin's README says.

lmms-eval's own requirements clash with this project's (torchvision must match torch exactly,
av<16, filelock's old layout), so it never goes into the test environment itself. It goes into
a side environment (``tokencompress.testing.side_env``): a venv layered over the running
interpreter's environment, venv or not, so it sees the project's packages (torch, transformers,
av, tokencompress) and adds only the plugin's ``lmms-eval`` extra and lmms-eval itself
(``--no-deps``), under the outer torch and transformers as pins. It never downloads a torch: a
plan that would is refused with the reason, and the lmms-eval tests fail with it.

That venv holds third-party packages only, so it is built once per machine and outer
environment and reused (keyed by the requirement lists and the outer environment, built under a
file lock). The plugin itself is installed per test session into a private ``--target`` folder
that goes first on ``PYTHONPATH``: every run tests the plugin next to these tests, whichever
checkout that is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tokencompress.testing.side_env import SideEnv, default_location, ensure
from tokencompress.testing.side_env import is_built as side_env_is_built

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
LMMS_EVAL = "lmms-eval==0.7.3"
BUILD = ["setuptools>=68"]  # the plugin is built with --no-build-isolation from the venv


class IndexUnreachable(Exception):
    """The package index cannot be reached: the lmms-eval checks cannot run here."""


def extra_requirements() -> list[str]:
    """The plugin's ``lmms-eval`` extra, read from its pyproject (the one list users install)."""
    with open(PLUGIN / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["optional-dependencies"]["lmms-eval"])


def recipe() -> dict[str, object]:
    return {"lmms_eval": LMMS_EVAL, "extra": extra_requirements(), "build": BUILD}


def default_venv() -> Path:
    """Under ``~/.cache/tokencompress``, keyed by :func:`recipe` and the running environment."""
    return default_location("lmms-eval", recipe())


def venv_env(plugin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for commands in the venv: this plugin and this checkout's tokencompress first, offline."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VIRTUAL_ENV")
    }
    paths = [str(plugin_dir)] if plugin_dir else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=venv_env())


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [
        ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "WARNING: Location" not in ln
    ]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _run_pip(python: Path, *args: str) -> None:
    proc = _pip(python, *args)
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed: {_last_line(proc)}")


def _build(side: SideEnv) -> None:
    wheels = side.path / "wheels"
    probe = side.pip("download", "--no-deps", "--dest", str(wheels), LMMS_EVAL)
    if probe.returncode != 0:
        raise IndexUnreachable(f"cannot download {LMMS_EVAL}: {_last_line(probe)}")
    (wheel,) = wheels.glob("lmms_eval-*.whl")
    # The README's order: the extra first, then lmms-eval without its requirements.
    side.install(*extra_requirements(), *BUILD)
    side.install(str(wheel), no_deps=True)


def ensure_venv(venv: Path) -> Path:
    """Build the venv unless a complete one is there; return its python.

    Raises :class:`IndexUnreachable` when lmms-eval cannot even be downloaded, and
    :class:`~tokencompress.testing.side_env.SideEnvError` (one line: what, and why) when the
    build would need a torch of its own or any later step fails.
    """
    return ensure(venv, recipe(), _build, name="lmms-eval venv", env=venv_env()).python


def is_built(venv: Path) -> bool:
    """Whether :func:`ensure_venv` would find the venv complete (and download nothing)."""
    return side_env_is_built(venv, recipe())


def install_plugin(python: Path, target: Path) -> Path:
    """This checkout's plugin, with its entry-point metadata, into ``target`` (put it on PYTHONPATH)."""
    _run_pip(python, "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(PLUGIN))
    return target
