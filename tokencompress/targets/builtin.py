"""Entry point that registers the built-in targets."""

from ..hooks import Registrar, hookimpl
from .llava_onevision import LlavaOnevisionTarget


@hookimpl
def tokencompress_register_targets(registrar: Registrar) -> None:
    registrar.add_target(LlavaOnevisionTarget)
