"""Entry point that registers the built-in strategies."""

from ..plugins import Registrar, hookimpl
from .dtd import DTD
from .rekv.strategy import ReKV
from .sliding_window import SlidingWindow
from .stc_cacher import StcCacher
from .stc_pruner import StcPruner
from .tome import ToMe
from .vidcom2 import VidCom2
from .vidcom2_stream import VidCom2Stream
from .visionzip import VisionZip


@hookimpl
def tokencompress_register_strategies(registrar: Registrar) -> None:
    for cls in (StcCacher, StcPruner, ToMe, VidCom2, VidCom2Stream, VisionZip, ReKV, SlidingWindow, DTD):
        registrar.add_strategy(cls)
