"""Cases of docs/errors.md: DyCoke TTM (``dycoke_ttm``)."""

from __future__ import annotations

from tests.support.errors import Ctx, case


@case("dycoke-ttm-keeps-zero")
def _(c: Ctx):
    text = "stages:\n  pre_prefill:\n    - {strategy: dycoke_ttm, k: 0.999}\n"
    return c.cli("validate", c.write(text))
