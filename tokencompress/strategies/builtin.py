"""Entry point that registers the built-in strategies."""

from ..plugins import Registrar, hookimpl
from .dtd import DTD
from .dycoke_kv import DycokeKV
from .dycoke_ttm import DycokeTTM
from .evs import Evs
from .fastv import FastV
from .infinipot_v import InfiniPotV
from .pdrop import PyramidDrop
from .rekv.strategy import ReKV
from .sliding_window import SlidingWindow
from .stc_cacher import StcCacher
from .stc_pruner import StcPruner
from .streamingtom_ctr import StreamingTomCtr
from .streamingtom_oqm.strategy import StreamingTomOqm
from .tome import ToMe
from .vidcom2 import VidCom2
from .vidcom2_stream import VidCom2Stream
from .visionzip import VisionZip

BUILTIN = (
    StcCacher,
    StcPruner,
    ToMe,
    VisionZip,
    VidCom2,
    VidCom2Stream,
    Evs,
    DTD,
    DycokeTTM,
    StreamingTomCtr,
    FastV,
    PyramidDrop,
    ReKV,
    SlidingWindow,
    InfiniPotV,
    DycokeKV,
    StreamingTomOqm,
)
"""Every built-in strategy class, token stages first, then the in_decoder droppers, then the kv_cache memories and decode policy."""


@hookimpl
def tokencompress_register_strategies(registrar: Registrar) -> None:
    for cls in BUILTIN:
        registrar.add_strategy(cls)
