"""The encoder features a LLaVA-style model feeds its projector: ``vision_feature_layer`` of the
tower's hidden states (one index, or several concatenated), class token dropped where the
config's select strategy says so. Shared by the LLaVA-OneVision and LLaVA-NeXT-Video targets."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["selected_features"]


def selected_features(hidden_states: tuple[Tensor, ...], config: Any) -> Tensor:
    """``[F, T, C]`` (``C`` times the layer count when several layers are concatenated)."""
    layer = config.vision_feature_layer
    if isinstance(layer, int):
        feats = hidden_states[layer]
    else:
        feats = torch.cat([hidden_states[i] for i in layer], dim=-1)
    return feats[:, 1:] if config.vision_feature_select_strategy == "default" else feats
