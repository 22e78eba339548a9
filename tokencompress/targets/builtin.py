"""Entry point that registers the built-in targets."""

from ..hooks import Registrar, hookimpl
from .llava_next_video import LlavaNextVideoTarget
from .llava_onevision import LlavaOnevisionTarget
from .qwen2_vl import Qwen2_5_VLTarget, Qwen2VLTarget
from .qwen3_vl import Qwen3VLTarget


@hookimpl
def tokencompress_register_targets(registrar: Registrar) -> None:
    registrar.add_target(LlavaOnevisionTarget)
    registrar.add_target(Qwen2VLTarget)
    registrar.add_target(Qwen2_5_VLTarget)
    registrar.add_target(Qwen3VLTarget)
    registrar.add_target(LlavaNextVideoTarget)
