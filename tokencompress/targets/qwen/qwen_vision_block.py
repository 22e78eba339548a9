"""Block adapter for the Qwen2-VL and Qwen2.5-VL vision blocks (packed sequence, rotary, windows).

Both ``Qwen2VLVisionBlock`` (LayerNorm, ``fc1/act/fc2`` MLP) and ``Qwen2_5_VLVisionBlock``
(RMSNorm, SwiGLU MLP) name their parts ``norm1``, ``attn.qkv`` (fused), ``attn.proj``,
``norm2`` and ``mlp``, and compute ``h + proj(attn(norm1 h))`` then ``+ mlp(norm2 ·)``; the
norms and MLPs are called as the model's own modules, so one adapter serves both.

What differs from SigLIP is the call: the block sees one packed ``[N, C]`` sequence with
``cu_seqlens`` (attention segments: whole temporal slices, or Qwen2.5-VL windows) and the
vision rotary table ``position_embeddings = (cos, sin)``, each ``[N, head_dim]``. :meth:`bind`
turns one call into ``[F, T, C]`` frames (see :mod:`.qwen_layout`), the rotary rows of every
token and, in windowed blocks, the window of every token, so :meth:`attention` can run any
subset of queries against all keys exactly as the block would. That per-call data depends only
on ``cu_seqlens`` and the rotary tables, which the tower shares between its blocks, so it is
derived once per chunk and ``cu_seqlens`` variant and memoized in the chunk's layout slot.

Tokens away from their own position (:meth:`QwenVisionBlockAdapter.at`, ToMe's merged tokens):
a token placed at original position ``p`` takes ``p``'s rotary row, i.e. its (h, w) angles,
and, in a windowed block, ``p``'s window; a merged token thus attends and is attended as its
representative would be. Those windows differ between frames, so such calls use one dense
window mask per frame instead of the per-window batching.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...api.block_adapter import BlockAdapter
from .qwen_layout import ChunkLayout, LayoutSlot

__all__ = ["QwenVisionBlockAdapter"]


@dataclass(frozen=True)
class _Call:
    """Per-call data, already in frames order."""

    layout: ChunkLayout
    cos: Tensor
    """``[F, T, head_dim]`` rotary cosines of every token."""
    sin: Tensor
    segments: Tensor | None
    """``[T]`` attention segment (window) of every slice position; None = the whole slice."""
    windows: _Windows | None = None
    """How slice positions group into windows; None when ``segments`` is."""
    frame_segments: Tensor | None = None
    """``[F, T]`` window of every token when tokens stand at per-frame positions (:meth:`at` in a
    windowed block); then ``segments`` and ``windows`` are None and a dense mask is used."""


@dataclass(frozen=True)
class _Windows:
    """Windows of a slice as a padded ``[W, L]`` table (``L`` = the largest window's size).

    Windows are not contiguous in frames (merge-block) order, so keys are gathered per window:
    ``keys[w]`` lists window ``w``'s slice positions in ascending order, padded with position 0
    where ``valid`` is False (edge windows are smaller). ``dest[t] = w·L + j`` is the padded slot
    of position ``t`` (``keys.view(-1)[dest] == arange(T)``).
    """

    keys: Tensor
    valid: Tensor
    dest: Tensor
    full: bool
    """Every window has ``L`` positions: no padding, no key mask."""

    @classmethod
    def of(cls, segments: Tensor) -> _Windows:
        t = segments.numel()
        counts = torch.bincount(segments)
        w, length = counts.numel(), int(counts.max())
        order = torch.argsort(segments, stable=True)  # grouped by window, ascending inside one
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(segments)
        slot[order] = torch.arange(t, device=segments.device) - starts[segments[order]]
        dest = segments * length + slot
        keys = torch.zeros(w * length, dtype=segments.dtype, device=segments.device)
        keys[dest] = torch.arange(t, device=segments.device)
        valid = torch.zeros(w * length, dtype=torch.bool, device=segments.device)
        valid[dest] = True
        return cls(keys.view(w, length), valid.view(w, length), dest, bool(valid.all()))


def _derive_call(cu_seqlens: Tensor, cos: Tensor, sin: Tensor, layout: ChunkLayout | None) -> _Call:
    """Everything :meth:`QwenVisionBlockAdapter.attention` needs of one block call, in frames order.

    ``layout`` is the running chunk's (checked against ``cu_seqlens``); None takes every
    ``cu_seqlens`` segment as one slice. This is the costly part of binding (gathers and host
    syncs); it depends only on the arguments, so callers memoize it per chunk.
    """
    layout = _call_layout(cu_seqlens, layout)
    segments = _segments(cu_seqlens, layout)
    windows = None if segments is None else _Windows.of(segments)
    return _Call(layout, layout.to_frames(cos), layout.to_frames(sin), segments, windows)


def _call_layout(cu_seqlens: Tensor, layout: ChunkLayout | None) -> ChunkLayout:
    n = int(cu_seqlens[-1])
    if layout is not None:
        t, h, w = layout.grid
        if t * h * w != n:
            raise RuntimeError(f"chunk layout {layout.grid} does not cover the {n} tokens of this block call")
        return layout
    lengths = torch.diff(cu_seqlens)
    if not bool((lengths == lengths[0]).all()):
        raise RuntimeError(f"temporal slices of one chunk must have equal sizes, got {lengths.tolist()}")
    return ChunkLayout((lengths.numel(), 1, int(lengths[0])), merge=1)


def _segments(cu_seqlens: Tensor, layout: ChunkLayout) -> Tensor | None:
    """Window id of every slice position, taken from the call's own ``cu_seqlens``.

    Segments must be the same in every slice and never span two (true for slices and for
    Qwen2.5-VL windows), so one ``[T]`` vector describes the whole chunk.
    """
    n = int(cu_seqlens[-1])
    pos = torch.arange(n, device=cu_seqlens.device)
    seg = torch.searchsorted(cu_seqlens[1:].to(pos.dtype), pos, right=True)
    frames = layout.to_frames(seg)  # [F, T]
    low, high = frames.min(dim=1).values, frames.max(dim=1).values
    local = frames - low[:, None]
    if bool((high[:-1] >= low[1:]).any()) or not bool((local == local[:1]).all()):
        raise RuntimeError("attention segments differ between the temporal slices of a chunk")
    return None if int(local[0].max()) == 0 else local[0]


class QwenVisionBlockAdapter(BlockAdapter):
    """Adapter over one Qwen-VL vision block; :meth:`bind` it to a call before using the parts.

    ``slot`` holds the running chunk's :class:`ChunkLayout`. ``windowed`` says the tower packs
    tokens in window order (Qwen2.5-VL): then the layout is required. Without it (Qwen2-VL used
    outside a target's ``encode``), every ``cu_seqlens`` segment is taken to be one slice.
    """

    cls_tokens = 0
    """Qwen towers have no class token: every token of a slice is a patch."""

    def __init__(self, layer: nn.Module, slot: LayoutSlot | None = None, windowed: bool = False) -> None:
        attn = layer.attn
        super().__init__(layer, attn.num_heads, attn.head_dim)
        self._attn = attn
        self._dim = attn.num_heads * attn.head_dim
        self._slot = slot
        self._windowed = windowed
        self._call: _Call | None = None

    # ------------------------------------------------------------- binding
    def bind(self, args: tuple, kwargs: dict) -> QwenVisionBlockAdapter:
        """The adapter for one block call. What it derives from the call's ``cu_seqlens`` and
        rotary tables is memoized in the slot for the running chunk (every block of a tower gets
        the same tensors), so only the first block of each ``cu_seqlens`` variant pays for it."""
        cu = args[0] if args else kwargs["cu_seqlens"]
        cos, sin = args[1] if len(args) > 1 else kwargs["position_embeddings"]
        layout = self._slot.current if self._slot is not None else None
        if layout is None:
            if self._windowed:
                raise RuntimeError(
                    "this vision tower packs tokens in window order: its block adapter needs the chunk "
                    "layout, which the target sets while its encode() runs the tower"
                )
            call = _derive_call(cu, cos, sin, None)
        else:
            call = self._slot.memoize((cu, cos, sin), lambda: _derive_call(cu, cos, sin, layout))
        bound = copy.copy(self)
        bound._call = call
        return bound

    def _bound(self) -> _Call:
        if self._call is None:
            raise RuntimeError("bind() the Qwen vision block adapter to a layer call first")
        return self._call

    def to_frames(self, hidden: Tensor) -> Tensor:
        """Packed ``[N, C]`` → ``[F, T, C]``."""
        return self._bound().layout.to_frames(hidden)

    def from_frames(self, x: Tensor) -> Tensor:
        """``[F, T, C]`` → packed ``[N, C]``."""
        return self._bound().layout.from_frames(x)

    # --------------------------------------------------------------- parts
    def ln1(self, x: Tensor) -> Tensor:
        return self.layer.norm1(x)

    def _project(self, x: Tensor, which: int) -> Tensor:
        """Rows ``which·C … (which+1)·C`` of the fused ``qkv``: only the requested projection runs."""
        rows = slice(which * self._dim, (which + 1) * self._dim)
        bias = self._attn.qkv.bias
        return F.linear(x, self._attn.qkv.weight[rows], None if bias is None else bias[rows])

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All three from the fused ``qkv`` in one product."""
        q, k, v = self._attn.qkv(x).split(self._dim, dim=-1)
        return q, k, v

    def q(self, x: Tensor) -> Tensor:
        return self._project(x, 0)

    def k(self, x: Tensor) -> Tensor:
        return self._project(x, 1)

    def v(self, x: Tensor) -> Tensor:
        return self._project(x, 2)

    def _heads(self, x: Tensor) -> Tensor:
        """``[F, n, C]`` → ``[F, n, H, d]``."""
        f, n, _ = x.shape
        return x.view(f, n, self.num_heads, self.head_dim)

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Vision RoPE on ``x`` ``[F, n, H, d]`` with ``cos``/``sin`` ``[F, n, d]``, in float32 like
        transformers' ``apply_rotary_pos_emb_vision``; returns ``[F, n, H, d]`` in ``x``'s dtype."""
        from transformers.models.qwen2_vl.modeling_qwen2_vl import rotate_half

        xf = x.float()
        cos, sin = cos[:, :, None].float(), sin[:, :, None].float()
        return (xf * cos + rotate_half(xf) * sin).to(x.dtype)

    def at(self, positions: Tensor) -> QwenVisionBlockAdapter:
        """This call's adapter for ``n`` tokens per frame standing at slice positions ``positions``
        ``[F, n]``: their rotary rows and windows are those positions' (see the module docstring)."""
        call = self._bound()
        idx = positions[..., None].expand(-1, -1, call.cos.shape[-1])
        seg = call.segments if call.frame_segments is None else call.frame_segments
        if seg is not None:
            seg = seg[positions] if seg.dim() == 1 else torch.gather(seg, 1, positions)
        bound = copy.copy(self)
        bound._call = replace(
            call,
            cos=torch.gather(call.cos, 1, idx),
            sin=torch.gather(call.sin, 1, idx),
            segments=None,
            windows=None,
            frame_segments=seg,
        )
        return bound

    def _rotary_rows(self, call: _Call, q_index: Tensor | None) -> tuple[Tensor, Tensor]:
        if q_index is None:
            return call.cos, call.sin
        idx = q_index[..., None].expand(-1, -1, call.cos.shape[-1])
        return torch.gather(call.cos, 1, idx), torch.gather(call.sin, 1, idx)

    def positioned(self, q: Tensor, k: Tensor, q_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotated query and key heads ``[F, H, n, d]``, ``[F, H, T, d]`` (the vision RoPE)."""
        call = self._bound()
        cos_q, sin_q = self._rotary_rows(call, q_index)
        qh = self._rotate(self._heads(q), cos_q, sin_q)
        kh = self._rotate(self._heads(k), call.cos, call.sin)
        return qh.transpose(1, 2), kh.transpose(1, 2)

    def _visible(self, call: _Call, q_index: Tensor | None) -> Tensor | None:
        """Bool ``[F or 1, n, T]``: key ``t`` lies in query ``i``'s window; None = no windows."""
        seg = call.frame_segments if call.frame_segments is not None else call.segments
        if seg is None:
            return None
        seg_k = seg if seg.dim() == 2 else seg[None]
        if q_index is None:
            seg_q = seg_k
        else:
            seg_q = torch.gather(seg_k.expand(q_index.shape[0], -1), 1, q_index)
        return seg_q[:, :, None] == seg_k[:, None, :]

    def logit_mask(self, q_index: Tensor | None = None) -> Tensor | None:
        """``[F or 1, n, T]``: ``-inf`` on keys outside the query's window (windowed blocks only)."""
        visible = self._visible(self._bound(), q_index)
        if visible is None:
            return None
        return torch.zeros(visible.shape, dtype=torch.float32, device=visible.device).masked_fill(
            ~visible, float("-inf")
        )

    def attention(
        self, q: Tensor, k: Tensor, v: Tensor, q_index: Tensor | None = None, key_bias: Tensor | None = None
    ) -> Tensor:
        """Queries ``[F, n, C]`` at slice positions ``q_index`` ``[F, n]`` (distinct within a
        frame) over all ``T`` keys of their slice (their window in windowed blocks); returns
        ``[F, n, C]`` heads merged."""
        call = self._bound()
        f, n, _ = q.shape
        cos_q, sin_q = self._rotary_rows(call, q_index)
        qh = self._rotate(self._heads(q), cos_q, sin_q)
        kh = self._rotate(self._heads(k), call.cos, call.sin)
        vh = self._heads(v)
        if call.windows is not None:
            return self._window_attention(call.windows, qh, kh, vh, q_index, key_bias)
        mask = None if key_bias is None else key_bias.to(qh.dtype)[:, None, None, :]
        visible = None if call.frame_segments is None else self._visible(call, q_index)
        if visible is not None:
            visible = visible[:, None]  # [F, 1, n, T]
            if mask is None:
                mask = visible
            else:
                mask = mask.expand(-1, -1, n, -1).masked_fill(~visible, float("-inf"))
        o = F.scaled_dot_product_attention(
            qh.transpose(1, 2),
            kh.transpose(1, 2),
            vh.transpose(1, 2),
            attn_mask=mask,
            scale=self._attn.scaling,
        )
        return o.transpose(1, 2).reshape(f, n, self._dim)

    def _window_attention(
        self,
        win: _Windows,
        qh: Tensor,
        kh: Tensor,
        vh: Tensor,
        q_index: Tensor | None,
        key_bias: Tensor | None,
    ) -> Tensor:
        """Windowed attention batched over (frame, window): each query sees only its window's keys.

        Heads in ``[F, ·, H, d]``. Keys and values are gathered into ``[F·W, H, L, d]`` blocks; queries
        are placed in ``[F·W, H, Q, d]``: all queries at their key slots (``Q = L``), a subset by rank
        among the window's selected queries (``Q`` = the most any window holds, or the bound
        ``min(n, L)`` off CPU); empty slots are zeros whose output rows are dropped. Padded key slots
        get ``-inf``, which only edge windows (or ``key_bias``) need.
        """
        f, n, heads, d = qh.shape
        nw, length = win.keys.shape
        keys = win.keys.view(-1)
        kw = kh.index_select(1, keys).view(f * nw, length, heads, d).transpose(1, 2)
        vw = vh.index_select(1, keys).view(f * nw, length, heads, d).transpose(1, 2)
        if q_index is None:
            slots, dest = length, win.dest.expand(f, -1)
            qw = qh.index_select(1, keys)
        else:
            q_seg = win.dest[q_index] // length  # [F, n] window of every query
            seg_sorted, order = torch.sort(q_seg, dim=1, stable=True)
            first = torch.searchsorted(seg_sorted, seg_sorted)  # first sorted slot of each window
            rank = torch.empty_like(q_seg).scatter_(1, order, torch.arange(n, device=q_seg.device) - first)
            # one code path on every device: the fullest window's count (a host read, one per layer)
            slots = int(rank.max()) + 1 if n else 1
            dest = q_seg * slots + rank
            qw = qh.new_zeros(f, nw * slots, heads, d)
            qw.scatter_(1, dest[..., None, None].expand(-1, -1, heads, d), qh)
        qw = qw.view(f * nw, slots, heads, d).transpose(1, 2)
        mask: Tensor | None = None
        if key_bias is not None:
            bias = key_bias.to(qh.dtype)[:, keys].view(f, nw, length)
            mask = bias.masked_fill(~win.valid, float("-inf")).view(f * nw, 1, 1, length)
        elif not win.full:
            mask = win.valid[None, :, None, None, :].expand(f, -1, -1, -1, -1).reshape(f * nw, 1, 1, length)
        o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=self._attn.scaling)
        o = o.transpose(1, 2).reshape(f, nw * slots, self._dim)
        return torch.gather(o, 1, dest[..., None].expand(-1, -1, self._dim))

    def out(self, o: Tensor) -> Tensor:
        return self._attn.proj(o)

    def ln2(self, x: Tensor) -> Tensor:
        return self.layer.norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.layer.mlp(x)
