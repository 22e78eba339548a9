"""Entry point that registers the built-in strategies."""

from ..hooks import Registrar, hookimpl
from .stc_cacher import StcCacher
from .stc_pruner import StcPruner


@hookimpl
def tokencompress_register_strategies(registrar: Registrar) -> None:
    for cls in (StcCacher, StcPruner):
        registrar.add_strategy(cls)
