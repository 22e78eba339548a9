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
    inside :meth:`attention`.
    """

    def __init__(self, layer: nn.Module, num_heads: int, head_dim: int) -> None:
        self.layer = layer
        self.num_heads = num_heads
        self.head_dim = head_dim

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
        self, q: Tensor, k: Tensor, v: Tensor, q_index: Tensor | None = None, key_bias: Tensor | None = None
    ) -> Tensor:
        """Attention of queries ``q`` ``[F, n, C]`` over keys/values ``[F, T, C]``, heads merged.

        ``q_index`` ``[F, n]`` gives the token position of every query (for rotary encoders);
        ``None`` means the queries are all ``T`` tokens in order. ``key_bias`` ``[F, T]`` is added
        to every logit of key ``t`` (all heads and queries), e.g. ToMe's ``log(size)``.
        """

    @abstractmethod
    def out(self, o: Tensor) -> Tensor: ...

    @abstractmethod
    def ln2(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def mlp(self, x: Tensor) -> Tensor: ...
