"""STC-Cacher: inside every ViT layer, recompute only the tokens whose keys moved.

A reference chunk runs each layer in full and remembers, per layer, the last frame's keys, values,
attention-branch and MLP-branch outputs. Other chunks compute fresh keys for every token, pick per
frame the ``n`` tokens least similar to the cached keys, and run queries, values, attention and MLP
for those rows only; cached rows stand in for the rest. The output keeps the input's shape, so the
target's stock pooling after the tower still sees every token.

Deviations from the reference code, none of which changes a result on the fixtures: K is projected
once (quirk C2), the similarity is computed in float32 with a stable lowest-index-first tie-break
(C16), and all state lives in a per-stream :class:`CacherState` instead of globals (C3, C4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..api.block_adapter import BlockAdapter
from ..api.strategy import BlockStrategy, StrategyParams
from ..api.types import BlockCall, ChunkInfo
from ..kernels.calibration import Calibration, machine_key

__all__ = [
    "StcCacherParams",
    "CacherState",
    "CacherTraceRecord",
    "StcCacher",
    "LayerMacs",
    "n_update",
    "select_updates",
    "layer_macs",
    "reference_layer",
    "reference_layer_packed",
    "sparse_layer",
    "sparse_layer_packed",
]


class StcCacherParams(StrategyParams):
    update_token_ratio: float = Field(0.25, gt=0.0, le=1.0)
    """Fraction of a frame's tokens recomputed per layer in non-reference chunks (quirk C15: 0 < r <= 1)."""
    cache_interval: int = Field(2, ge=1)
    """Every ``cache_interval``-th chunk of a stream is a reference chunk, starting with the first."""
    fast_reference: bool | Literal["auto"] = "auto"
    """Run reference layers on the target's row kernels (:meth:`BlockAdapter.for_rows`: on CPU
    float32, prepacked weights with Q, K and V as one product), which agree with the stock layer
    to float32 rounding (≤ 3e-6 on the fixtures, tolerance 1e-5). ``false`` runs the stock
    layer's own modules: reference chunks are then bit-identical to the plain tower. ``auto``
    times both on the first reference layer of each shape and keeps the faster, or stock on a tie
    (:mod:`...kernels.calibration`): the row kernels ran reference chunks at 0.81x the plain tower
    where torch dispatched AVX-512 and at 1.07x on an AVX2 machine (issue 22)."""


@dataclass
class CacherTraceRecord:
    """What one layer did in one chunk; collected only when a test or a debugger asks for it."""

    layer: int
    chunk: int
    reference: bool
    update_indices: Tensor | None = None
    """``[F, n]`` recomputed token positions, lowest similarity first; None in reference chunks."""
    key_cosine_similarity: Tensor | None = None
    """``[F, T]`` float32 cosine of fresh keys against the cached keys; None in reference chunks."""


@dataclass
class CacherState:
    """One stream's Cacher memory; two streams never share one (quirk C3)."""

    chunks_seen: int = 0
    is_reference: bool = True
    """Whether the chunk being encoded now is a reference chunk (set by ``start_chunk``)."""
    refs: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=dict)
    """layer index -> (K_ref, V_ref, A_ref, M_ref), each ``[T, C]``, from the last frame of the
    latest reference chunk (quirk C12)."""
    derived: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    """layer index -> (K_ref / ||K_ref|| in float32, A_ref + M_ref): what non-reference chunks read,
    derived from ``refs`` on first use after each reference chunk, so reference chunks pay nothing."""
    trace: list[CacherTraceRecord] | None = None


def n_update(tokens: int, ratio: float) -> int:
    """Tokens recomputed per frame: Python's ``int()`` floors, and the clamp keeps at least one."""
    return max(1, min(int(tokens * ratio), tokens))


def select_updates(similarity: Tensor, n: int) -> Tensor:
    """``[F, n]`` positions of the ``n`` lowest similarities per frame of ``similarity`` ``[F, T]``.

    A stable sort breaks ties towards the lower index, so the choice never depends on top-k's
    unspecified tie order. The rows stay in ascending-similarity order, as the reference's top-k
    returns them: the set alone fixes the maths, but CPU matmul kernels round a row differently
    at different positions, and this order is what keeps the fixtures within float32 rounding.
    (Sorting 729 floats is a few microseconds; a top-k with the same tie order saves nothing.)
    """
    return torch.sort(similarity, dim=-1, stable=True).indices[:, :n]


def _flat(index: Tensor, tokens: int) -> Tensor:
    """``[F, n]`` per-frame positions as ``[F*n]`` rows of the frame-major ``[F*T, C]`` layout."""
    if index.shape[0] == 1:
        return index[0]
    return (index + tokens * torch.arange(index.shape[0], device=index.device)[:, None]).reshape(-1)


def _rows(x: Tensor, flat: Tensor, n: int) -> Tensor:
    """Rows ``flat`` of ``x`` ``[F, T, C]`` -> ``[F, n, C]`` (whole-row copies, not per-element gathers)."""
    f, _, c = x.shape
    return x.reshape(-1, c).index_select(0, flat).view(f, n, c)


def _with_rows(base: Tensor, flat: Tensor, rows: Tensor) -> Tensor:
    """``base`` ``[F, T, C]`` (a fresh tensor, written in place) with rows ``flat`` set to ``rows``."""
    base = base.contiguous()
    base.view(-1, base.shape[-1]).index_copy_(0, flat, rows.reshape(-1, rows.shape[-1]))
    return base


def _unit_keys(k: Tensor) -> Tensor:
    """``k`` ``[..., C]`` in float32 over its norm clamped at 1e-8, as ``F.cosine_similarity`` scales it."""
    k = k.float()
    return k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(1e-8)


def _key_cosine(k: Tensor, ref_unit: Tensor) -> Tensor:
    """``[F, T]`` float32 cosine of ``k`` ``[F, T, C]`` against pre-normalised ``ref_unit`` ``[T, C]``:
    ``F.cosine_similarity``'s own arithmetic (each side over its clamped norm, then the dot), with
    the reference side done once per reference chunk. A dot-then-divide form would save two
    passes but moves the traced similarities by ~1e-7, a third of the fixtures' 1e-6 margin."""
    return (_unit_keys(k) * ref_unit).sum(-1)


@dataclass(frozen=True)
class LayerMacs:
    """Multiply-accumulates per frame for one layer; LayerNorm, softmax, GELU and cosine are left out."""

    full: int
    non_reference: int
    """With K projected once, as this implementation does."""
    non_reference_as_coded: int
    """With the reference code's second K projection (quirk C2), for comparison with published numbers."""

    @property
    def ratio(self) -> float:
        return self.non_reference / self.full


def layer_macs(tokens: int, width: int, mlp_width: int, n: int) -> LayerMacs:
    """Analytic MACs of a layer of ``tokens`` x ``width`` with MLP ``mlp_width``, recomputing ``n`` rows.

    On a real SigLIP-so400m layer (T=729, C=1152, M=4304) with n=182 recomputed rows: 12 323.34 M MACs
    for the full layer, 3 802.54 M with K projected once.
    """
    t, c, m = tokens, width, mlp_width
    full = 4 * t * c * c + 2 * t * t * c + 2 * t * c * m
    non_ref = t * c * c + 3 * n * c * c + 2 * n * t * c + 2 * n * c * m
    return LayerMacs(full, non_ref, non_ref + t * c * c)


def _method(a: BlockAdapter, name: str, *args: Tensor) -> Any:
    return getattr(a, name)(*args)


_out_of_graph = torch.compiler.disable(_method)
""":func:`_method` run eagerly from compiled code: the few-row adapter's prepacked oneDNN linears
beat what the compiler makes of them, and their Python weight cache cannot be traced."""


def reference_layer(
    a: BlockAdapter, h: Tensor, linear: Callable[..., Any] = _method
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Full layer ``[F, T, C]`` and its K, V, attention branch A and MLP branch M (each ``[F, T, C]``);
    ``linear`` as in :func:`sparse_layer`."""
    x = a.ln1(h)
    q, k, v = linear(a, "qkv", x)
    attn = linear(a, "out", a.attention(q, k, v))
    h1 = h + attn
    mlp = linear(a, "mlp", a.ln2(h1))
    return h1 + mlp, k, v, attn, mlp


def reference_layer_packed(a: BlockAdapter, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`reference_layer` for compiling on the row kernels: its linears stay eager, on packed weights."""
    return reference_layer(a, h, _out_of_graph)


def sparse_layer(
    a: BlockAdapter,
    h: Tensor,
    k_unit: Tensor,
    attn_mlp_ref: Tensor,
    v_ref: Tensor,
    n: int,
    linear: Callable[..., Any] = _method,
) -> tuple[Tensor, Tensor, Tensor]:
    """Non-reference layer: fresh K everywhere, Q/V/attention/MLP for ``n`` rows per frame.

    ``h`` ``[F, T, C]``; ``k_unit`` (unit reference keys), ``attn_mlp_ref`` (A_ref + M_ref) and
    ``v_ref`` are ``[T, C]``. Returns the output ``[F, T, C]``, the recomputed positions ``[F, n]``
    and the key cosine ``[F, T]``. Unselected rows cost one add (``h + (A_ref + M_ref)``); selected
    rows get Q, V, attention and MLP and are written over them, so no full-size tensor is cloned or
    scattered more than once. ``linear(a, name, *args)`` runs the adapter's linear steps (``k``,
    ``qv``, ``out_add``, ``mlp_add``): in the compiled kernel, outside the graph.
    """
    f, t, _ = h.shape
    x = a.ln1(h)
    k = linear(a, "k", x)  # [F, T, C], once for both the similarity and the attention (quirk C2)
    sim = _key_cosine(k, k_unit)  # [F, T]
    index = select_updates(sim, n)  # [F, n]
    flat = _flat(index, t)
    x_sel = _rows(x, flat, n)
    q_sel, v_sel = linear(a, "qv", x_sel)
    # stale values outside I are deliberate: the reference attends to the cached V there
    v_full = _with_rows(v_ref.expand(f, -1, -1).clone(), flat, v_sel)
    h1_sel = linear(a, "out_add", a.attention(q_sel, k, v_full, q_index=index), _rows(h, flat, n))
    out_sel = linear(a, "mlp_add", a.ln2(h1_sel), h1_sel)  # LN2 is per token: rows I alone suffice
    return _with_rows(h + attn_mlp_ref, flat, out_sel), index, sim


def sparse_layer_packed(
    a: BlockAdapter, h: Tensor, k_unit: Tensor, attn_mlp_ref: Tensor, v_ref: Tensor, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sparse_layer` for compiling: its linears stay eager, on the adapter's packed weights."""
    return sparse_layer(a, h, k_unit, attn_mlp_ref, v_ref, n, _out_of_graph)


class StcCacher(BlockStrategy):
    """STC-Cacher (``pre_vit_block``): periodic full reference chunks, sparse recompute in between."""

    name = "stc_cacher"
    Params = StcCacherParams
    stateful = True
    computes_layer = True
    summary = "Recompute, per ViT layer, only the tokens whose keys moved most since a cached reference frame"
    paper = "https://arxiv.org/abs/2512.00891"
    reference = "lern-to-write/STC (model/custom_siglip.py)"
    params: StcCacherParams
    _reference_kernel = staticmethod(reference_layer)
    _sparse_kernel = staticmethod(sparse_layer)

    def __init__(self, params: StcCacherParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.calibration: Calibration[tuple[Tensor, ...]] = Calibration()
        """``fast_reference: auto``'s choices, per (shape, dtype, ISA, threads): held by this
        instance (and its compiled twin), so every pipeline and stream built on it calibrates
        once; not stream state, since which kernel is faster does not depend on the stream."""

    def new_state(self) -> CacherState:
        return CacherState()

    def copy_state(self, state: CacherState) -> CacherState:
        """The dicts copied, the tensors shared: ``_reference`` and ``_derived`` replace entries
        and nothing writes into a cached tensor, so later chunks cannot change this copy."""
        return CacherState(
            state.chunks_seen,
            state.is_reference,
            dict(state.refs),
            dict(state.derived),
            None if state.trace is None else list(state.trace),
        )

    def start_chunk(self, state: CacherState, chunk: ChunkInfo) -> None:
        """Advance the stream's own counter; leftover frames count as a chunk of their own (quirk C9)."""
        state.is_reference = state.chunks_seen % self.params.cache_interval == 0
        state.chunks_seen += 1

    def layer_macs(self, tokens: int, width: int, mlp_width: int) -> LayerMacs:
        """Per-frame MACs of one layer at this instance's ``update_token_ratio``."""
        return layer_macs(tokens, width, mlp_width, n_update(tokens, self.params.update_token_ratio))

    def block_forward(self, call: BlockCall, hidden: Tensor, run_next: Callable[[Tensor], Tensor]) -> Tensor:
        """Layer output ``[F, T, C]`` for ``hidden`` ``[F, T, C]``; never calls ``run_next``."""
        state: CacherState = call.state
        ref = state.refs.get(call.layer_index)
        if state.is_reference or ref is None or ref[0].shape != hidden.shape[1:]:
            # A missing or shape-mismatched cache cannot be reused: refresh it instead of guessing.
            return self._reference(call, state, hidden)
        return self._sparse(call, state, hidden, ref)

    def _record(self, call: BlockCall, state: CacherState, **fields: object) -> None:
        if state.trace is not None:
            state.trace.append(CacherTraceRecord(call.layer_index, state.chunks_seen - 1, **fields))  # type: ignore[arg-type]

    def _reference(self, call: BlockCall, state: CacherState, h: Tensor) -> Tensor:
        """Full layer; caches frame -1's K, V, attention branch A and MLP branch M, each ``[T, C]``.

        K and V may be views into one ``[F, T, 3C]`` product (fused Q/K/V): caching them keeps
        that buffer, one extra ``[T, C]`` per layer, instead of paying a copy per reference chunk.
        """
        out, k, v, attn, mlp = self._reference_outputs(call.adapter, h)
        # A one-frame chunk's last frame is the whole tensor: keep it as is. With more frames,
        # clone, or a view of frame -1 would keep the whole chunk's [F, T, C] tensors alive.
        last = (lambda t: t[-1]) if h.shape[0] == 1 else (lambda t: t[-1].clone())
        state.refs[call.layer_index] = tuple(last(t.detach()) for t in (k, v, attn, mlp))  # type: ignore[assignment]
        state.derived.pop(call.layer_index, None)
        self._record(call, state, reference=True)
        return out

    def _reference_outputs(self, adapter: BlockAdapter, h: Tensor) -> tuple[Tensor, ...]:
        """:func:`reference_layer` of ``h`` ``[F, T, C]`` on the stock adapter or its row kernels,
        as ``fast_reference`` says; ``auto`` asks :attr:`calibration` (CPU only: the row kernels
        are CPU kernels, and a wall clock cannot time an asynchronous device), and the compiled
        twin keeps the row kernels its compiled graph was built around."""
        fast = self.params.fast_reference
        if fast is False:
            return self._reference_kernel(adapter, h)
        rows = adapter.for_rows()
        if fast == "auto" and rows is not adapter and h.device.type == "cpu":
            if self._reference_kernel is not reference_layer:  # compiled: kernel fixed at compile time
                return self._reference_kernel(rows, h)
            key = machine_key("stc_cacher.reference_layer", tuple(h.shape), h.dtype)
            return self.calibration.run(
                key, lambda: self._reference_kernel(adapter, h), lambda: self._reference_kernel(rows, h)
            )
        return self._reference_kernel(rows if fast is True else adapter, h)  # auto off the CPU: stock

    def _derived(self, state: CacherState, layer: int) -> tuple[Tensor, Tensor]:
        """(unit reference keys, A_ref + M_ref) of ``layer``, computed once per reference chunk."""
        got = state.derived.get(layer)
        if got is None:
            k_ref, _, attn_ref, mlp_ref = state.refs[layer]
            got = state.derived[layer] = (_unit_keys(k_ref), attn_ref + mlp_ref)
        return got

    def _sparse(
        self, call: BlockCall, state: CacherState, h: Tensor, ref: tuple[Tensor, Tensor, Tensor, Tensor]
    ) -> Tensor:
        """Non-reference layer through :func:`sparse_layer` on the few-row adapter."""
        a: BlockAdapter = call.adapter.for_rows()
        k_unit, attn_mlp_ref = self._derived(state, call.layer_index)
        n = n_update(h.shape[1], self.params.update_token_ratio)
        out, index, sim = self._sparse_kernel(a, h, k_unit, attn_mlp_ref, ref[1], n)
        self._record(call, state, reference=False, update_indices=index, key_cosine_similarity=sim)
        return out

    def compiled(self, compiler: Callable[[Callable], Callable]) -> StcCacher:
        """This strategy with :func:`reference_layer` and :func:`sparse_layer` run through ``compiler``."""
        reference = reference_layer_packed if self.params.fast_reference is not False else reference_layer
        return self.with_kernels(
            _reference_kernel=compiler(reference), _sparse_kernel=compiler(sparse_layer_packed)
        )
