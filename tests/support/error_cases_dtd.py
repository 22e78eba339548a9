"""Cases of docs/errors.md: DTD's parameters."""

from __future__ import annotations

from tests.support.errors import Ctx, case


@case("dtd-relative-threshold")
def _(c: Ctx):
    return c.validate("stages:\n  post_vit:\n    - {strategy: dtd, mode: relative, threshold: 1.0}\n")


@case("dtd-pixel-method")
def _(c: Ctx):
    return c.validate("stages:\n  post_vit:\n    - {strategy: dtd, method: pixel}\n")
