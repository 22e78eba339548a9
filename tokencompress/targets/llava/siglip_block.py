"""Block adapter for SigLIP/CLIP-style encoder layers (separate q/k/v/out projections, no rotary)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...api.block_adapter import BlockAdapter
from ...kernels.packed_linear import PackedLinears

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
        self._for_rows: SiglipBlockAdapter | None = None

    def for_rows(self) -> SiglipBlockAdapter:
        """The same layer with its six linears on prepacked oneDNN weights (see :mod:`packed_linear`)."""
        if self._for_rows is None:
            self._for_rows = _PackedSiglipBlockAdapter(self.layer)
        return self._for_rows

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


class _PackedSiglipBlockAdapter(SiglipBlockAdapter):
    """Projections and MLP through packed weights (Q and V as one product, residual adds fused);
    norms and attention as the stock layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(layer)
        self._packs = PackedLinears()
        attn, mlp = layer.self_attn, layer.mlp
        self._lin = {
            "q": (attn.q_proj,),
            "k": (attn.k_proj,),
            "v": (attn.v_proj,),
            "qv": (attn.q_proj, attn.v_proj),
            "qkv": (attn.q_proj, attn.k_proj, attn.v_proj),
            "out": (attn.out_proj,),
            "fc1": (mlp.fc1,),
            "fc2": (mlp.fc2,),
        }
        self._act = mlp.activation_fn

    def for_rows(self) -> SiglipBlockAdapter:
        return self

    def q(self, x: Tensor) -> Tensor:
        return self._packs(self._lin["q"], x)

    def k(self, x: Tensor) -> Tensor:
        return self._packs(self._lin["k"], x)

    def v(self, x: Tensor) -> Tensor:
        return self._packs(self._lin["v"], x)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self._packs(self._lin["qkv"], x).split(x.shape[-1], dim=-1)
        return q, k, v

    def qv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q, v = self._packs(self._lin["qv"], x).split(x.shape[-1], dim=-1)
        return q, v

    def out(self, o: Tensor) -> Tensor:
        return self._packs(self._lin["out"], o)

    def out_add(self, o: Tensor, residual: Tensor) -> Tensor:
        return self._packs(self._lin["out"], o, add=residual)

    def mlp(self, x: Tensor) -> Tensor:
        return self._packs(self._lin["fc2"], self._act(self._packs(self._lin["fc1"], x)))

    def mlp_add(self, x: Tensor, residual: Tensor) -> Tensor:
        return self._packs(self._lin["fc2"], self._act(self._packs(self._lin["fc1"], x)), add=residual)
