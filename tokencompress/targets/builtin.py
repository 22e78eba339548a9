"""Entry point that registers the built-in targets."""

from ..plugins import Registrar, hookimpl
from .llava.llava_next_video import LlavaNextVideoTarget
from .llava.llava_onevision import LlavaOnevisionTarget
from .qwen.qwen2_vl import Qwen2_5_VLTarget, Qwen2VLTarget
from .qwen.qwen3_vl import Qwen3VLTarget


@hookimpl
def tokencompress_register_targets(registrar: Registrar) -> None:
    registrar.add_target(LlavaOnevisionTarget)
    registrar.add_target(Qwen2VLTarget)
    registrar.add_target(Qwen2_5_VLTarget)
    registrar.add_target(Qwen3VLTarget)
    registrar.add_target(LlavaNextVideoTarget)
