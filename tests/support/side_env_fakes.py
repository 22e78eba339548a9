"""Hand-made wheels and distributions for side-environment tests: pip plans them offline (``--no-index``)."""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

from tokencompress.testing.side_env import SideEnv

OFFLINE = ("--no-index",)


def fake_wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A metadata-only wheel ``NAME-VERSION`` in ``dest`` whose requirements are ``requires``."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/METADATA", meta)
        zf.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{dist}/RECORD", "")
    return path


def other_torch() -> str:
    """A torch requirement the running environment's torch never meets (the project needs >= 2.4)."""
    assert not metadata.version("torch").startswith("1.13.1")
    return "torch==1.13.1"


def side_site(side: SideEnv) -> Path:
    (site,) = (side.path / "lib").glob("python*/site-packages")
    return site


def fake_dist(site: Path, name: str, version: str, module: str | None = None) -> None:
    """An installed distribution in ``site`` (metadata; ``module`` as its package's ``__init__``)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if module is not None:
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(module)
