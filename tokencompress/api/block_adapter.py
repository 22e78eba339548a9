"""A view of one vision-encoder layer as its parts, so a strategy can run it for a token subset.

STC-Cacher and ToMe need to reach inside a layer (keys for all tokens, queries for a few, the
MLP for a few). Each target builds one adapter per layer from its own module names, so the
strategies stay model-agnostic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

__all__ = ["BlockAdapter"]


class BlockAdapter(ABC):
    """Pre-norm transformer layer ``h' = h + out(attn(ln1 h)); h'' = h' + mlp(ln2 h')``.

    All tensors are ``[F, n, C]`` (frames, tokens, model width); heads are split and merged
    inside :meth:`attention`. Encoders whose layers see a packed sequence and per-call extras
    (Qwen-VL: ``[N, C]`` with ``cu_seqlens`` and rotary tables) override :meth:`bind`,
    :meth:`to_frames` and :meth:`from_frames`; SigLIP-style layers need none of that.
    """

    def __init__(self, layer: nn.Module, num_heads: int, head_dim: int) -> None:
        self.layer = layer
        self.num_heads = num_heads
        self.head_dim = head_dim

    def bind(self, args: tuple, kwargs: dict) -> BlockAdapter:
        """The adapter for one call of the layer, given the call's arguments after the hidden states."""
        return self

    def for_rows(self) -> BlockAdapter:
        """This adapter for row-subset recompute (STC-Cacher's non-reference layers), whose
        contract is float32 rounding, not bit-equality with the stock layer: a target may return
        one with faster few-row kernels (prepacked weights). The default is this adapter."""
        return self

    def to_frames(self, hidden: Tensor) -> Tensor:
        """The layer's hidden-state layout → ``[F, T, C]`` (one row per frame or temporal slice)."""
        return hidden

    def from_frames(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_frames`."""
        return x

    def at(self, positions: Tensor) -> BlockAdapter:
        """The adapter for a call whose ``n`` tokens per frame stand at original ``positions``.

        ``positions`` ``[F, n]`` long (indices into the bound call's ``T`` tokens, distinct within a
        frame): token ``i`` of every ``[F, n, ·]`` tensor given to the returned adapter is placed at
        ``positions[f, i]`` (its rotary angles, its window), and ``q_index`` then indexes those
        ``n`` tokens. Position-free attention needs no placement: the default is ``self``.
        """
        return self

    def positioned(self, q: Tensor, k: Tensor, q_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Queries ``[F, n, C]`` and keys ``[F, T, C]`` as heads ``[F, H, n, d]``, ``[F, H, T, d]``,
        positioned as the layer's logits use them (rotary encoders rotate them by position;
        ``q_index`` as in :meth:`attention`). Logits are ``scale · q·kᵀ + logit_mask``."""
        f, n, _ = q.shape
        t = k.shape[1]
        return (
            q.view(f, n, self.num_heads, self.head_dim).transpose(1, 2),
            k.view(f, t, self.num_heads, self.head_dim).transpose(1, 2),
        )

    def logit_mask(self, q_index: Tensor | None = None) -> Tensor | None:
        """Additive float32 ``[F or 1, n, T]`` mask (0 or ``-inf``) of the keys each query sees in
        this call (windowed attention); None when every query sees every key."""
        return None

    @abstractmethod
    def ln1(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def q(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def k(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def v(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_index: Tensor | None = None,
        key_bias: Tensor | None = None,
    ) -> Tensor:
        """Attention of queries ``q`` ``[F, n, C]`` over keys/values ``[F, T, C]``, heads merged.

        ``q_index`` ``[F, n]`` gives the token position of every query (rotary encoders rotate
        queries and keys by position; windowed encoders mask keys outside the query's window);
        ``None`` means the queries are all ``T`` tokens in order. ``key_bias`` ``[F, T]`` is added
        to every logit of key ``t`` (all heads and queries), e.g. ToMe's ``log(size)``.
        """

    @abstractmethod
    def out(self, o: Tensor) -> Tensor: ...

    @abstractmethod
    def ln2(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def mlp(self, x: Tensor) -> Tensor: ...

    # Combined steps, so an adapter with fused kernels can run them as one; the defaults are the
    # plain compositions.
    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of the same rows ``x`` ``[F, n, C]``."""
        return self.q(x), self.k(x), self.v(x)

    def qv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Queries and values of the same rows ``x`` ``[F, n, C]``."""
        return self.q(x), self.v(x)

    def out_add(self, o: Tensor, residual: Tensor) -> Tensor:
        """``residual + out(o)``."""
        return residual + self.out(o)

    def mlp_add(self, x: Tensor, residual: Tensor) -> Tensor:
        """``residual + mlp(x)``."""
        return residual + self.mlp(x)
