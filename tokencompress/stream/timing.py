"""Wall-clock reads that mean something on an accelerator: wait for queued kernels first."""

from __future__ import annotations

import time

import torch

__all__ = ["now"]


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
