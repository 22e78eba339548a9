"""Side environments are layered over the running environment and never get a torch of their own.

pip plans hand-made wheels with ``--no-index`` here, so these tests download nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.side_env_fakes import OFFLINE, fake_dist, fake_wheel, other_torch, side_site
from tokencompress.testing import side_env
from tokencompress.testing.side_env import SideEnv, SideEnvError, default_location, ensure

OUTER = {n: metadata.version(n) for n in ("torch", "transformers")}


def _created(tmp_path: Path) -> SideEnv:
    side = SideEnv(tmp_path / "side", "test env")
    side.create()
    return side


def _inside(python: Path, code: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_constraints_pin_the_outer_torch_and_transformers(tmp_path: Path) -> None:
    side = _created(tmp_path)
    pins = side.constraints.read_text().splitlines()
    assert f"torch=={OUTER['torch']}" in pins and f"transformers=={OUTER['transformers']}" in pins
    assert (side.path / "pyvenv.cfg").read_text().count("include-system-site-packages = false") == 1


@pytest.mark.slow
def test_side_env_imports_the_outer_torch_and_transformers(tmp_path: Path) -> None:
    side = _created(tmp_path)
    side.verify()  # torch.__version__ and transformers.__version__ inside are the outer ones
    got = _inside(side.python, "import json, torch; print(json.dumps([torch.__version__, torch.__file__]))")
    import torch

    assert got == [OUTER["torch"], torch.__file__]  # the running environment's own copy, not a download


def test_side_env_built_from_a_venv_sees_that_venv(tmp_path: Path) -> None:
    """The newcomer's case: the test command runs from a venv. A side environment made there sees
    the venv's packages (``--system-site-packages`` would show the base interpreter's instead)."""
    outer = tmp_path / "outer-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(outer)], check=True)
    (site,) = (outer / "lib").glob("python*/site-packages")
    # the venv sees the running environment (torch, tokencompress) behind its own packages
    lines = [f"import site; site.addsitedir({d!r})\n" for d in side_env.outer_site_dirs()]
    (site / "running-environment.pth").write_text("".join(lines))
    fake_dist(site, "tc_only_in_venv", "1.0", module="WHERE = 'venv'\n")
    script = (
        "import json, subprocess, sys; from pathlib import Path\n"
        "from tokencompress.testing.side_env import SideEnv\n"
        "side = SideEnv(Path(sys.argv[1])); side.create()\n"
        "code = 'import json, tc_only_in_venv, sys; print(json.dumps([tc_only_in_venv.WHERE, sys.prefix]))'\n"
        "print(subprocess.run([str(side.python), '-c', code], capture_output=True, text=True, check=True).stdout)"
    )
    root = str(ROOT)
    proc = subprocess.run(
        [str(outer / "bin" / "python"), "-c", script, str(tmp_path / "side")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip()) == ["venv", str(tmp_path / "side")]


def test_refuses_a_package_that_needs_another_torch(tmp_path: Path) -> None:
    side = _created(tmp_path)
    wheel = fake_wheel(tmp_path / "wheels", "needs_old_torch", "0.1", (other_torch(),))
    with pytest.raises(SideEnvError) as err:
        side.install(str(wheel), options=OFFLINE)
    message = str(err.value)
    assert message.startswith(f"test env: {wheel} cannot be installed next to this environment's torch ")
    assert f"depends on {other_torch()}" in message and f"=={OUTER['torch']}" in message
    assert "\n" not in message
    assert not list(side_site(side).glob("needs_old_torch*"))


def test_refuses_cuda_libraries_before_installing_anything(tmp_path: Path) -> None:
    side = _created(tmp_path)
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "tc_wants_cuda", "0.1", ("nvidia-fake-cu12",))
    fake_wheel(wheels, "nvidia_fake_cu12", "1.0")
    with pytest.raises(
        SideEnvError, match=r"would download nvidia[-_]fake[-_]cu12 1\.0; .*nothing was installed"
    ):
        side.install("tc_wants_cuda", options=(*OFFLINE, "--find-links", str(wheels)))
    assert not list(side_site(side).glob("*.dist-info"))


def test_installs_a_light_package_into_the_side_env_only(tmp_path: Path) -> None:
    side = _created(tmp_path)
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "tc_light", "0.2", ("tc_light_dep",))
    fake_wheel(wheels, "tc_light_dep", "0.1")
    assert side.plan("tc_light", options=(*OFFLINE, "--find-links", str(wheels))) == [
        ("tc_light", "0.2"),
        ("tc_light_dep", "0.1"),
    ]
    side.install("tc_light", options=(*OFFLINE, "--find-links", str(wheels)))
    assert sorted(p.name for p in side_site(side).glob("*.dist-info")) == [
        "tc_light-0.2.dist-info",
        "tc_light_dep-0.1.dist-info",
    ]
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("tc_light")  # the running environment is untouched


def test_verify_names_a_torch_that_is_not_the_outer_one(tmp_path: Path) -> None:
    side = _created(tmp_path)
    fake_dist(side_site(side), "torch", "0.0.1")
    with pytest.raises(
        SideEnvError, match=rf"it sees torch 0\.0\.1 instead of {re.escape(OUTER['torch'])}; delete"
    ):
        side.verify()


def test_ensure_builds_once_and_again_for_another_recipe(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(SideEnv, "verify", lambda self: None)  # (verified above; keeps this test fast)
    built = []
    path = tmp_path / "cached"
    assert not side_env.is_built(path, "a")
    for recipe in ("a", "a", "b", "b"):
        side = ensure(path, recipe, built.append, name="n")
        assert (side.path, side.name) == (path, "n")
        assert side_env.is_built(path, recipe) and not side_env.is_built(path, recipe + "x")
    assert [s.path for s in built] == [path, path]


def test_cache_key_holds_the_outer_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = default_location("x", ["r"])
    assert here == default_location("x", ["r"]) and here.parent == tmp_path / "tokencompress"
    assert here.name.startswith("x-venv-") and default_location("x", ["r2"]) != here
    with monkeypatch.context() as m:
        m.setattr(sys, "prefix", "/some/other/venv")
        assert default_location("x", ["r"]) != here
    real = side_env._installed_version
    monkeypatch.setattr(side_env, "_installed_version", lambda n: "2.0.0+cu999" if n == "torch" else real(n))
    assert default_location("x", ["r"]) != here


def test_a_recipe_may_own_its_transformers_but_never_a_torch(tmp_path: Path) -> None:
    """vLLM pins an older transformers than the running one: the recipe says which range the side
    environment holds, torch stays the outer one, and the plan may then hold that transformers."""
    side = SideEnv(tmp_path / "side", "test env", own={"transformers": ">=5.16.1,<5.20"})
    side.create()
    pins = side.constraints.read_text().splitlines()
    assert f"torch=={OUTER['torch']}" in pins and "transformers>=5.16.1,<5.20" in pins
    assert not any(p.startswith("transformers==") for p in pins)
    side_env.check_plan("n", "x", [("transformers", "5.19.0")], own={"transformers": ">=5.16.1,<5.20"})
    with pytest.raises(SideEnvError, match=r"would download transformers 5\.19\.0"):
        side_env.check_plan("n", "x", [("transformers", "5.19.0")])
    with pytest.raises(SideEnvError, match=r"would download torch 2\.0\.0"):
        side_env.check_plan("n", "x", [("torch", "2.0.0")], own={"transformers": ">=5"})
    with pytest.raises(SideEnvError, match=r"^test env: torch cannot be a side environment's own release"):
        SideEnv(tmp_path / "other", "test env", own={"torch": ">=2"})


def test_verify_checks_an_owned_package_against_its_range(tmp_path: Path) -> None:
    side = SideEnv(tmp_path / "side", "test env", own={"transformers": ">=5.16.1,<5.20"})
    with pytest.raises(
        SideEnvError, match=r"it sees transformers 5\.25\.0 outside >=5\.16\.1,<5\.20; delete"
    ):
        side._check_owned(side._owned(), {"transformers": "5.25.0"})
    side._check_owned(side._owned(), {"transformers": "5.19.0"})
