"""The firstresult resolve_target hook and auto resolution of a model's target."""

from __future__ import annotations

import pytest
from torch import nn

from tests.support.plugin_fakes import plugin
from tokencompress import CompatibilityError, ConfigError, Pipeline, Registry
from tokencompress.targets.llava.llava_onevision import LlavaOnevisionTarget


class Unsupported(nn.Module):
    pass


def test_resolve_auto(tiny_llava_ov: nn.Module) -> None:
    assert Registry().resolve_target(tiny_llava_ov) is LlavaOnevisionTarget
    assert Registry().resolve_target(tiny_llava_ov, "llava_onevision") is LlavaOnevisionTarget


def test_explicit_target_that_does_not_fit_the_model() -> None:
    with pytest.raises(CompatibilityError, match="'llava_onevision' does not support Unsupported"):
        Registry().resolve_target(Unsupported(), "llava_onevision")


def test_explicit_unknown_target_name(tiny_llava_ov: nn.Module) -> None:
    with pytest.raises(ConfigError, match="did you mean 'llava_onevision'"):
        Registry().resolve_target(tiny_llava_ov, "llava_onevison")


def test_no_target_supports_the_model() -> None:
    with pytest.raises(
        CompatibilityError, match="no registered target supports Unsupported.*llava_onevision"
    ):
        Registry().resolve_target(Unsupported())


class CustomLlava(LlavaOnevisionTarget):
    name = "custom_llava"


def test_resolve_hook_overrides_auto(tiny_llava_ov: nn.Module) -> None:
    seen: list[set[str]] = []

    def tokencompress_resolve_target(model, targets):
        seen.append(set(targets))
        return targets["custom_llava"] if isinstance(model, type(tiny_llava_ov)) else None

    reg = Registry(
        plugins=[
            plugin(
                "pkg-custom", targets=[CustomLlava], tokencompress_resolve_target=tokencompress_resolve_target
            )
        ]
    )
    assert reg.resolve_target(tiny_llava_ov) is CustomLlava
    assert len(seen) == 1 and {"llava_onevision", "custom_llava"} <= seen[0]  # plus the other built-ins
    # an explicit name still wins over the hook, and None from the hook falls back to matching
    assert reg.resolve_target(tiny_llava_ov, "llava_onevision") is LlavaOnevisionTarget
    with pytest.raises(CompatibilityError):
        reg.resolve_target(Unsupported())
    assert Pipeline.from_dict({}, reg).bind(tiny_llava_ov).target.name == "custom_llava"


def test_first_resolve_result_wins(tiny_llava_ov: nn.Module) -> None:
    def first(model, targets):
        return targets["custom_llava"]

    def second(model, targets):
        return targets["llava_onevision"]

    reg = Registry(
        plugins=[
            plugin("pkg-second", tokencompress_resolve_target=second),
            plugin("pkg-first", targets=[CustomLlava], tokencompress_resolve_target=first),
        ]
    )
    # pluggy calls the most recently registered implementation first
    assert reg.resolve_target(tiny_llava_ov) is CustomLlava
