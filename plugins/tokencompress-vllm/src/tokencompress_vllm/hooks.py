"""Two narrow hooks into vLLM 0.32, installed once per process by :func:`install`.

* ``VllmConfig.try_verify_and_update_config`` (vLLM's per-architecture config hook, called when
  the engine's configuration is built) also runs :func:`.serving.configure`: the pipeline is
  checked at engine start, in the starting process, for every architecture (a model the plugin
  cannot prune is refused there too).
* ``load_model`` of the model runners sets the runner's ``is_multimodal_pruning_enabled`` when the
  loaded model is one of ours with a pipeline, or prunes with vLLM's own ``video_pruning_rate``.
  vLLM sets it only from ``video_pruning_rate``, and its CPU runner never sets it at all; without it the runner does not strip the 4 position columns
  the embeddings carry (a shape mismatch, ``[120, 68]`` against ``[120, 64]``).

Each wrapper calls vLLM's own method first and is marked, so a second :func:`install` in the same
process (vLLM loads general plugins more than once) wraps nothing twice.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from tokencompress import TokenCompressError

from .serving import configure

__all__ = ["EngineStartError", "install"]

_MARK = "_tokencompress_hook"
RUNNERS = (
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"),
    ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner"),
)


def _wrap(cls: type, name: str, after: Callable[[Any], None]) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self)
        return result

    setattr(wrapper, _MARK, True)
    setattr(cls, name, wrapper)


def _flag_pruning(runner: Any) -> None:
    """Ours, or vLLM's own pruning (``--video-pruning-rate``), which its CPU runner forgets as well."""
    model = runner.get_model()
    mm = getattr(runner.model_config, "multimodal_config", None)
    own = (
        getattr(model, "supports_multimodal_pruning", False)
        and mm is not None
        and mm.is_multimodal_pruning_enabled()
    )
    if own or getattr(model, "tokencompress_pruning", False):
        runner.is_multimodal_pruning_enabled = True


class EngineStartError(TokenCompressError):
    """A refusal at engine start. Not a ValueError: vLLM's configuration is a pydantic dataclass,
    which would turn a ValueError into a multi-line validation report; this one reads as its line."""


def _configure(vllm_config: Any) -> None:
    try:
        configure(vllm_config)
    except TokenCompressError as exc:
        raise EngineStartError(str(exc)) from None


def install() -> None:
    from vllm.config import VllmConfig

    _wrap(VllmConfig, "try_verify_and_update_config", _configure)
    for module, name in RUNNERS:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # a build without that runner (no CPU runner on GPU builds)
            continue
        _wrap(cls, "load_model", _flag_pruning)
