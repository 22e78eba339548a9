"""Cases of docs/errors.md: side environments (``tokencompress.testing.side_env``), planned offline."""

from __future__ import annotations

from importlib import metadata

from tests.support.errors import Ctx, case
from tests.support.side_env_fakes import OFFLINE, fake_dist, fake_wheel, other_torch, side_site
from tokencompress.testing.side_env import SideEnv


def _side(c: Ctx) -> SideEnv:
    side = SideEnv(c.tmp / "side", "lmms-eval venv")
    side.create()
    return side


@case("side-env-torch-conflict")
def _(c: Ctx):
    side = _side(c)
    wheel = fake_wheel(c.tmp / "wheels", "needs_old_torch", "0.1", (other_torch(),))
    return c.api(lambda: side.install(str(wheel), options=OFFLINE))


@case("side-env-heavy-download")
def _(c: Ctx):
    side = _side(c)
    fake_wheel(c.tmp / "wheels", "tc_wants_cuda", "0.1", ("nvidia-fake-cu12",))
    fake_wheel(c.tmp / "wheels", "nvidia_fake_cu12", "1.0")
    return c.api(
        lambda: side.install("tc_wants_cuda", options=(*OFFLINE, "--find-links", str(c.tmp / "wheels")))
    )


@case("side-env-pip-failed")
def _(c: Ctx):
    side = _side(c)
    return c.api(lambda: side.install("tc-no-such-package", options=OFFLINE))


@case("side-env-wrong-version")
def _(c: Ctx):
    side = _side(c)
    fake_dist(side_site(side), "torch", "0.0.1")
    return c.api(side.verify)


@case("side-env-cannot-import")
def _(c: Ctx):
    side = _side(c)
    fake_dist(
        side_site(side), "torch", metadata.version("torch"), module="raise ImportError('broken torch')\n"
    )
    return c.api(side.verify)
