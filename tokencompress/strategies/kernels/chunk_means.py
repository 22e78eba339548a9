"""A stream's memory of chunk means, as a running sum that only changes on commit."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["ChunkMeans", "ChunkMeansStep"]


@dataclass(frozen=True)
class ChunkMeansStep:
    """The memory after one more chunk, computed but not yet committed."""

    total: Tensor
    """``[D']`` float32 sum of the chunk means so far, this chunk included."""
    count: int

    @property
    def mean(self) -> Tensor:
        """``[D']`` raw (un-normalised) mean of the chunk means, as the references store it."""
        return self.total / self.count


@dataclass
class ChunkMeans:
    """The mean of every chunk's mean token so far, kept as a sum and a count (O(D), STC quirk P4).

    Both references keep an ever-growing list and average it on every chunk; the sum is the same up
    to float rounding. Each entry is stored position by position: where chunks pick their own
    channels, entries of different channels are averaged together (STC-Pruner quirk P2, also in
    STC's streaming VidCom²), which the faithful modes reproduce. :meth:`peek` is pure so a chunk
    can be planned and dropped.
    """

    total: Tensor | None = None
    count: int = 0

    def peek(self, chunk_mean: Tensor, owner: str) -> ChunkMeansStep:
        """The memory with ``chunk_mean`` ``[D']`` folded in; this object is left as it is."""
        if self.total is not None and self.total.shape != chunk_mean.shape:
            raise ValueError(
                f"{owner} memory holds {self.total.shape[0]}-channel means but this chunk gives "
                f"{chunk_mean.shape[0]}; the feature width must not change within a stream"
            )
        total = chunk_mean if self.total is None else self.total + chunk_mean
        return ChunkMeansStep(total, self.count + 1)

    def commit(self, step: ChunkMeansStep) -> None:
        self.total, self.count = step.total, step.count
