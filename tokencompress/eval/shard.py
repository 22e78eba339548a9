"""Ranks for ``torchrun`` / ``accelerate launch``: strided whole-video groups, gathered to rank 0.

:class:`Shard` reads the launcher's environment and opens one process group itself (gloo on CPU
or when ranks outnumber GPUs, NCCL otherwise); without a launcher it is rank 0 of 1 and never
touches ``torch.distributed``, so there is no bare ``dist.get_rank()`` anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Shard", "assign"]

T = TypeVar("T")


def assign(groups: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``r`` takes groups ``r, r + W, r + 2W, ...`` of the sorted list (no padding)."""
    return list(groups[rank::world])


class Shard:
    def __init__(
        self, rank: int = 0, world: int = 1, owned: bool = False, backend: str | None = None
    ) -> None:
        self.rank = rank
        self.world = world
        self.owned = owned
        self.backend = backend

    @classmethod
    def from_env(cls, device: str = "cpu") -> Shard:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), False, dist.get_backend())
        gpus = torch.cuda.device_count() if device != "cpu" else 0
        backend = "nccl" if gpus and world <= gpus else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Ranks may finish far apart (long videos): allow hours, not the 30 min default.
        dist.init_process_group(backend=backend, timeout=timedelta(hours=24))
        return cls(dist.get_rank(), dist.get_world_size(), True, backend)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (``None`` elsewhere); a rank with no work still joins."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
