"""One encoder layer run with its attention computed explicitly, yielding the received attention.

A strategy that reads a layer's attention probabilities (StreamingTOM CTR's saliency with
``saliency_source: tower``) asks the pipeline to *tap* that layer
(``Strategy.attention_taps``). While a stream's chunk runs, in the thread running it, the tapped
layer's forward is replaced (an instance override, see :mod:`.block_routing`) by
:func:`tapped_layer`: the layer's own parts through the target's block adapter, ``h + out(attn(ln1
h))`` then ``+ mlp(ln2 ·)``, with ``attn`` computed by
:func:`~tokencompress.kernels.attention_received.attention_received`, so the output is the stock
layer's up to float rounding (explicit softmax instead of the fused kernel) and the per-key
received attention comes out of the same pass. Every other layer keeps its stock (fused) forward.
"""

from __future__ import annotations

from torch import Tensor

from ..api.block_adapter import BlockAdapter
from ..kernels.attention_received import attention_received, query_block

__all__ = ["tapped_layer"]


def tapped_layer(adapter: BlockAdapter, h: Tensor, block: int | None = None) -> tuple[Tensor, Tensor]:
    """``(out, received)`` of the layer behind ``adapter`` (bound to this call) on ``h`` ``[F, T, C]``.

    ``out`` ``[F, T, C]`` is the layer's output; ``received`` ``[F, T]`` float32 the attention each
    of the ``T`` tokens receives, averaged over heads and query rows (a CLS column is included;
    the caller drops it). Queries and keys are positioned as the layer uses them (rotary), the
    adapter's :meth:`~BlockAdapter.logit_mask` restricts windowed layers, the logit scale is
    ``head_dim ** -0.5`` as in every supported tower. ``block``: query rows per softmax block
    (None: :func:`~tokencompress.kernels.attention_received.query_block`).
    """
    f, t, _ = h.shape
    block = block if block is not None else query_block(f, adapter.num_heads, t, t)
    q, k, v = adapter.qkv(adapter.ln1(h))
    qh, kh = adapter.positioned(q, k)
    vh = v.view(f, t, adapter.num_heads, adapter.head_dim).transpose(1, 2)
    o, received = attention_received(qh, kh, vh, adapter.head_dim**-0.5, adapter.logit_mask(), block)
    o = o.transpose(1, 2).reshape(f, t, adapter.num_heads * adapter.head_dim)
    x = adapter.out_add(o, h)
    return adapter.mlp_add(adapter.ln2(x), x), received
