"""Block adapter for SigLIP/CLIP-style encoder layers (separate q/k/v/out projections, no rotary)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..block_adapter import BlockAdapter

__all__ = ["SiglipBlockAdapter"]


class SiglipBlockAdapter(BlockAdapter):
    """Adapter over ``SiglipEncoderLayer`` (also fits ``CLIPEncoderLayer``).

    Attention is torch SDPA with the default ``1/sqrt(head_dim)`` scale, no mask: on CPU
    float32 this is bit-identical to transformers' ``sdpa`` path for these layers.
    """

    def __init__(self, layer: nn.Module) -> None:
        attn = layer.self_attn
        super().__init__(layer, attn.num_heads, attn.head_dim)
        self._attn = attn

    def ln1(self, x: Tensor) -> Tensor:
        return self.layer.layer_norm1(x)

    def q(self, x: Tensor) -> Tensor:
        return self._attn.q_proj(x)

    def k(self, x: Tensor) -> Tensor:
        return self._attn.k_proj(x)

    def v(self, x: Tensor) -> Tensor:
        return self._attn.v_proj(x)

    def _heads(self, x: Tensor) -> Tensor:
        f, n, _ = x.shape
        return x.view(f, n, self.num_heads, self.head_dim).transpose(1, 2)

    def attention(
        self, q: Tensor, k: Tensor, v: Tensor, q_index: Tensor | None = None, key_bias: Tensor | None = None
    ) -> Tensor:
        mask = None if key_bias is None else key_bias.to(q.dtype)[:, None, None, :]
        o = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
        f, _, n, _ = o.shape
        return o.transpose(1, 2).reshape(f, n, self.num_heads * self.head_dim)

    def out(self, o: Tensor) -> Tensor:
        return self._attn.out_proj(o)

    def ln2(self, x: Tensor) -> Tensor:
        return self.layer.layer_norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.layer.mlp(x)
