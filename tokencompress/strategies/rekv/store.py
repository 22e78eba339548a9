"""The block store: every frame's pre-RoPE K and V, in host memory, in slabs of many blocks.

The reference allocates one pinned tensor per block, per layer, per K/V (quirk Q10: about
100,800 allocations per hour of video); here a layer's blocks live in slabs of ``slab_blocks``
blocks ``[slab_blocks, kvh, bs, d]``, pinned when the model runs on CUDA, so the host store grows
in large steps and never copies what it holds. Representatives (``[n, kvh, d]`` float32) stay on
the compute device: they are scored at every question.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BlockStore"]


class BlockStore:
    """One layer's frame blocks. ``add`` takes ``[kvh, m * bs, d]``; ``gather`` returns ``[kvh, len(ids) * bs, d]``."""

    def __init__(
        self,
        num_kv_heads: int,
        block_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        slab_blocks: int = 64,
        pin: bool | None = None,
    ) -> None:
        self.kvh, self.bs, self.d = num_kv_heads, block_size, head_dim
        self.dtype, self.device = dtype, device
        self.slab_blocks = slab_blocks
        self.pin = torch.cuda.is_available() if pin is None else pin
        self.k_slabs: list[Tensor] = []
        self.v_slabs: list[Tensor] = []
        self.reps = torch.zeros(0, num_kv_heads, head_dim, dtype=torch.float32, device=device)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def _slab(self) -> Tensor:
        shape = (self.slab_blocks, self.kvh, self.bs, self.d)
        return torch.empty(shape, dtype=self.dtype, device="cpu", pin_memory=self.pin)

    def add(self, k: Tensor, v: Tensor, reps: Tensor) -> None:
        """Append ``m`` blocks (``k, v`` ``[kvh, m * bs, d]``, ``reps`` ``[m, kvh, d]``)."""
        m = reps.shape[0]
        kb = k.reshape(self.kvh, m, self.bs, self.d).transpose(0, 1)
        vb = v.reshape(self.kvh, m, self.bs, self.d).transpose(0, 1)
        for i in range(m):
            slab, row = divmod(self.count, self.slab_blocks)
            if slab == len(self.k_slabs):
                self.k_slabs.append(self._slab())
                self.v_slabs.append(self._slab())
            self.k_slabs[slab][row].copy_(kb[i], non_blocking=self.pin)
            self.v_slabs[slab][row].copy_(vb[i], non_blocking=self.pin)
            self.count += 1
        self.reps = torch.cat((self.reps, reps.to(device=self.device, dtype=torch.float32)))

    def gather(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """K and V of blocks ``ids`` in the given order, on the compute device."""
        if ids.numel() == 0:
            empty = torch.zeros(self.kvh, 0, self.d, dtype=self.dtype, device=self.device)
            return empty, empty.clone()
        ks, vs = [], []
        for b in ids.tolist():
            slab, row = divmod(int(b), self.slab_blocks)
            ks.append(self.k_slabs[slab][row])
            vs.append(self.v_slabs[slab][row])
        k = torch.stack(ks).to(self.device, non_blocking=self.pin)  # [m, kvh, bs, d]
        v = torch.stack(vs).to(self.device, non_blocking=self.pin)
        m = k.shape[0]
        return (
            k.transpose(0, 1).reshape(self.kvh, m * self.bs, self.d),
            v.transpose(0, 1).reshape(self.kvh, m * self.bs, self.d),
        )

    def snapshot(self) -> tuple[int, int, Tensor]:
        """(blocks, slabs, representatives): stored rows are never rewritten and ``reps`` is replaced,
        not written, so trimming back to the counts restores the store (no copy of the blocks)."""
        return self.count, len(self.k_slabs), self.reps

    def restore(self, snapshot: tuple[int, int, Tensor]) -> None:
        self.count, slabs, self.reps = snapshot
        del self.k_slabs[slabs:], self.v_slabs[slabs:]

    def nbytes(self) -> int:
        """Host bytes allocated for blocks (whole slabs)."""
        return sum(t.numel() * t.element_size() for t in (*self.k_slabs, *self.v_slabs))

    def used_bytes(self) -> int:
        """Host bytes of the blocks actually stored."""
        return 2 * self.count * self.kvh * self.bs * self.d * torch.empty(0, dtype=self.dtype).element_size()
