"""One decoder layer's ReKV memory: sinks, sliding window, frame blocks and the answer cache.

Everything is pre-RoPE and batch-free (``[heads, tokens, d]``). Token ``t`` of the stream is the
``t``-th token ever encoded; the first ``n_init`` are the system prompt. The life of a stream:

* :meth:`encode` (init prompt, then chunks): each call is cut into pieces of ``exc_block_size``
  tokens from its start (one frame each); a piece first loads sinks (a token becomes a sink once
  it is ``n_local`` behind the piece end), then attends its window plus the loaded sinks
  (:func:`window_sink_attention`), then, once all sinks are loaded, turns every complete frame
  that is not yet a block into one. The window keeps the last ``n_local`` tokens after the call.
* :meth:`question`: retrieve blocks for the question's mean pre-RoPE query (or take caller-given
  ones), build the answer cache ``[sinks ; blocks in time order]`` and attend the question over
  it plus itself, positions renumbered from 0. The question's KV is not kept.
* :meth:`answer`: prompt and decode steps extend the answer cache (trimmed to the first
  ``n_init`` plus the last ``n_local`` tokens when longer), positions renumbered at every step.
* :meth:`end_answer` drops the answer cache; the video memory is untouched by questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attention import window_sink_attention
from .retrieval import Selection, block_scores, representatives, select_blocks
from .store import BlockStore

__all__ = ["ReKVSettings", "ReKVLayer", "QuestionInfo"]


@dataclass(frozen=True)
class ReKVSettings:
    """Per-layer parameters (see :class:`tokencompress.strategies.rekv.strategy.ReKVParams` for their meaning).

    ``n_init`` None leaves the sink count open: every token is a sink until :meth:`ReKVLayer.close_sinks`
    (called when the first frame arrives) fixes it to the tokens encoded so far.
    """

    n_init: int | None
    n_local: int
    block_size: int
    topk: int
    chunk_size: int = 1
    exc_block_size: int | None = None
    count_sinks_once: bool = False
    similarity: str = "dot"
    slab_blocks: int = 64

    @property
    def piece(self) -> int:
        return self.exc_block_size or self.block_size


@dataclass(frozen=True)
class QuestionInfo:
    """What one layer did for a question (the fixture sidecars' per-layer fields)."""

    retrieved: Tensor
    scores: Tensor | None
    margin: float | None
    branch: str
    kept_len: int
    uses_sink_stage: bool


def _empty(kvh: int, d: int, like: Tensor | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(kvh, 0, d, dtype=dtype if like is None else like.dtype, device=device)


class ReKVLayer:
    """The memory of one layer of one stream (the reference's ``ContextManager``)."""

    def __init__(
        self,
        settings: ReKVSettings,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        freqs: Tensor,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        pin: bool | None = None,
    ) -> None:
        self.cfg = settings
        self.heads, self.kvh, self.d = num_heads, num_kv_heads, head_dim
        self.freqs = freqs.to(device)
        self.dtype, self.device = dtype, torch.device(device)
        self.store = BlockStore(
            num_kv_heads, settings.block_size, head_dim, dtype, self.device, settings.slab_blocks, pin
        )
        self.n_init = settings.n_init
        self.length = 0  # tokens encoded so far
        self.loaded = 0  # sinks attended at the fixed angle while encoding
        e = _empty(num_kv_heads, head_dim, None, dtype, self.device)
        self.sink_k, self.sink_v = e, e.clone()  # stream tokens [0, n_init)
        self.win_k, self.win_v = e.clone(), e.clone()  # stream tokens [win_start, length)
        self.win_start = 0
        self.pend_k, self.pend_v = e.clone(), e.clone()  # tokens after the sinks not yet moved into blocks
        self.answer_k: Tensor | None = None
        self.answer_v: Tensor | None = None
        self.answer_sinks = 0
        self.answer_visual: Tensor | None = None  # [answer cache] bool: the retrieved frames' entries

    # ------------------------------------------------------------------ state
    @property
    def sinks_full(self) -> bool:
        return self.n_init is not None and self.loaded >= self.n_init

    def close_sinks(self) -> None:
        """Fix the sink count to the tokens encoded so far (no-op once fixed)."""
        if self.n_init is None:
            self.n_init = self.length

    def snapshot(self) -> dict[str, Any]:
        """This layer's fields and its store's counts. Every tensor field is replaced, never written
        in place (``torch.cat``, slices), so holding the references is a snapshot."""
        fields = dict(self.__dict__)
        fields["store"] = self.store.snapshot()
        return fields

    def restore(self, snapshot: dict[str, Any]) -> None:
        fields = dict(snapshot)
        self.store.restore(fields.pop("store"))
        self.__dict__.update(fields)

    def state(self) -> dict[str, Any]:
        """The counters the reference reports after each encode op."""
        return {
            "n_blocks": len(self.store),
            "init_len": self.loaded,
            "local_len": self.win_k.shape[1],
            "init_full": self.sinks_full,
            "remainder_len": self.length - self.loaded - len(self.store) * self.cfg.block_size,
        }

    def resident_tokens(self) -> int:
        """Distinct tokens attention can reach on the compute device: the window, the sinks outside
        it and, during an answer, the answer cache (unblocked frames are always inside the window)."""
        ans = 0 if self.answer_k is None else self.answer_k.shape[1]
        return self.win_k.shape[1] + min(self.sink_k.shape[1], self.win_start) + ans

    def device_bytes(self) -> int:
        tensors = [
            self.sink_k,
            self.sink_v,
            self.win_k,
            self.win_v,
            self.pend_k,
            self.pend_v,
            self.store.reps,
        ]
        if self.answer_k is not None:
            tensors += [self.answer_k, self.answer_v]
        return sum(t.numel() * t.element_size() for t in tensors)

    # --------------------------------------------------------------- encoding
    def encode(self, q: Tensor, k: Tensor, v: Tensor, rows: Any = None) -> Tensor:
        """Encode ``L`` tokens (``q`` ``[H, L, d]``, ``k, v`` ``[kvh, L, d]``); returns ``[L, H * d]``.

        ``rows``: what a subclass needs to know about the call's rows (M-RoPE positions); unused here."""
        cfg = self.cfg
        start, length = self.length, q.shape[1]
        self._begin_call(start, rows)
        win_k = torch.cat((self.win_k, k.to(self.dtype)), dim=1)
        win_v = torch.cat((self.win_v, v.to(self.dtype)), dim=1)
        outs = []
        for ps in range(start, start + length, cfg.piece):
            pe = min(ps + cfg.piece, start + length)
            self._take(k[:, ps - start : pe - start], v[:, ps - start : pe - start], ps)
            if not self.sinks_full and pe - self.loaded > cfg.n_local:
                self.loaded = min(pe if self.n_init is None else self.n_init, pe - cfg.n_local)
            s0 = max(ps - cfg.n_local, 0)
            a, b = s0 - self.win_start, pe - self.win_start
            qpos = torch.arange(ps, pe, device=q.device) - s0
            kpos = torch.arange(s0, pe, device=q.device) - s0
            sink_mask = None
            if cfg.count_sinks_once and self.loaded:
                dist = torch.arange(ps, pe, device=q.device)[:, None] - torch.arange(
                    self.loaded, device=q.device
                )
                sink_mask = dist >= cfg.n_local
            outs.append(
                window_sink_attention(
                    q[:, ps - start : pe - start], win_k[:, a:b], win_v[:, a:b], qpos, kpos, cfg.n_local,
                    self.freqs, self.sink_k[:, : self.loaded], self.sink_v[:, : self.loaded], sink_mask,
                    **self._window_rope(a, ps - self.win_start, b),
                )
            )  # fmt: skip
            self.length = pe
            if self.sinks_full:
                self._offload()
        keep = min(cfg.n_local, win_k.shape[1])
        self.win_k, self.win_v = win_k[:, -keep:].contiguous(), win_v[:, -keep:].contiguous()
        self.win_start = self.length - keep
        self._begin_call(start, None)
        return torch.cat(outs) if outs else q.new_zeros(0, self.heads * self.d)

    def _take(self, k: Tensor, v: Tensor, first: int) -> None:
        """File the piece's tokens: the stream's first ``n_init`` are sinks, the rest wait to be blocks."""
        n_init = first + k.shape[1] if self.n_init is None else self.n_init
        split = max(0, min(n_init - first, k.shape[1]))
        if split:
            self.sink_k = torch.cat((self.sink_k, k[:, :split].to(self.dtype)), dim=1)
            self.sink_v = torch.cat((self.sink_v, v[:, :split].to(self.dtype)), dim=1)
        if split < k.shape[1]:
            self._file_frames(k[:, split:], v[:, split:], first + split)

    def _file_frames(self, k: Tensor, v: Tensor, first: int) -> None:
        """Tokens after the sinks, stream index ``first`` on: every one waits to be part of a block."""
        self.pend_k = torch.cat((self.pend_k, k.to(self.dtype)), dim=1)
        self.pend_v = torch.cat((self.pend_v, v.to(self.dtype)), dim=1)

    # ------------------------------------------------- hooks of the M-RoPE subclass
    def _begin_call(self, start: int, rows: Any) -> None:
        """An encode call of stream tokens from ``start`` begins with ``rows`` (None: it ended)."""

    def _window_rope(self, a: int, qa: int, b: int) -> dict[str, Any]:
        """Extra ``window_sink_attention`` arguments for the piece whose keys are ``[a, b)`` and
        queries ``[qa, b)`` of ``[window ; call]``; 1-D RoPE needs none."""
        return {}

    def _answer_rope(self, w0: int, lq: int, cols: Tensor) -> dict[str, Any]:
        """The same for an answer-cache call: keys ``[w0, total)`` of ``[answer cache ; call]``, of which
        the call attends columns ``cols`` (all of them unless a decode policy chose a subset)."""
        return {}

    def _start_answer(self, branch: str, ids: Tensor, place: Any) -> None:
        """The answer cache: ``[sinks ; retrieved blocks in time order]``."""
        bk, bv = self._blocks(branch, ids)
        self.answer_sinks = self.sink_k.shape[1]
        self.answer_k = torch.cat((self.sink_k, bk), dim=1)
        self.answer_v = torch.cat((self.sink_v, bv), dim=1)
        self.answer_visual = torch.cat(
            (torch.zeros(self.answer_sinks, dtype=torch.bool), torch.ones(bk.shape[1], dtype=torch.bool))
        )

    def _offload(self) -> None:
        bs = self.cfg.block_size
        m = self.pend_k.shape[1] // bs
        if m == 0:
            return
        k, v = self.pend_k[:, : m * bs], self.pend_v[:, : m * bs]
        self.store.add(k, v, representatives(k, bs))
        self.pend_k, self.pend_v = self.pend_k[:, m * bs :], self.pend_v[:, m * bs :]

    # --------------------------------------------------------------- questions
    def candidates(self) -> tuple[str, int, Tensor | None]:
        """(branch, number of frames, representatives or None when the store is used)."""
        if self.sinks_full:
            return "blocks", len(self.store), None
        bs = self.cfg.block_size
        if self.pend_k.shape[1] % bs:
            raise ValueError(
                f"rekv: {self.pend_k.shape[1]} tokens after the {self.n_init} sinks are not whole frames of "
                f"block_size {bs}; every chunk must prefill exactly block_size tokens per frame"
            )
        return "remainder", self.pend_k.shape[1] // bs, representatives(self.pend_k, bs)

    def select(self, q: Tensor, external: list[int] | None = None) -> tuple[str, Selection]:
        """The blocks this layer retrieves for question queries ``q`` ``[H, Lq, d]``."""
        branch, n, reps = self.candidates()
        if external is not None:
            return branch, Selection(self.external_ids(external, n), None, None)
        if n <= self.cfg.topk:
            return branch, select_blocks(None, n, self.cfg.topk, self.cfg.chunk_size)
        scores = block_scores(self.store.reps if reps is None else reps, q, self.cfg.similarity)
        return branch, select_blocks(scores, n, self.cfg.topk, self.cfg.chunk_size)

    def external_ids(self, ids: list[int], n: int) -> Tensor:
        """Caller-given frame ids checked, deduplicated and sorted (quirk Q13, fixed)."""
        bad = [i for i in ids if not 0 <= int(i) < n]
        if bad:
            raise ValueError(
                f"rekv: external frame ids {bad} are out of range; the memory holds frames 0..{n - 1}"
            )
        unique = sorted({int(i) for i in ids})
        if len(unique) > self.cfg.topk:
            raise ValueError(
                f"rekv: {len(unique)} external frame ids given, at most topk = {self.cfg.topk} fit"
            )
        return torch.tensor(unique, dtype=torch.long)

    def _blocks(self, branch: str, ids: Tensor) -> tuple[Tensor, Tensor]:
        if branch == "blocks":
            return self.store.gather(ids)
        bs = self.cfg.block_size
        cols = (ids[:, None] * bs + torch.arange(bs)[None]).reshape(-1).to(self.pend_k.device)
        return self.pend_k[:, cols], self.pend_v[:, cols]

    def question(
        self, q: Tensor, k: Tensor, v: Tensor, external: list[int] | None = None, place: Any = None
    ) -> tuple[Tensor, QuestionInfo]:
        """Retrieve, start the answer cache, attend the question; returns ``[Lq, H * d]`` and what was done.

        ``place``: how a subclass gives the retrieved frames positions (M-RoPE); unused here."""
        branch, sel = self.select(q, external)
        self._start_answer(branch, sel.indices, place)
        assert self.answer_k is not None
        kept = self.answer_k.shape[1]
        out = self._answer_attention(q, k, v)
        info = QuestionInfo(
            sel.indices, sel.scores, sel.margin, branch, kept, kept + q.shape[1] > self.cfg.n_local
        )
        return out, info

    def answer(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None) -> Tensor:
        """A prompt or decode step on the answer cache; the cache keeps the step's KV (trimmed).
        ``keep``: the entries of ``[answer cache ; own k]`` to attend (a decode policy's choice)."""
        if self.answer_k is None:
            raise RuntimeError("rekv: prompt/decode step without a question (call question() first)")
        out = self._answer_attention(q, k, v, keep)
        ak = torch.cat((self.answer_k, k.to(self.dtype)), dim=1)
        av = torch.cat((self.answer_v, v.to(self.dtype)), dim=1)
        vis = self.answer_visual
        if vis is not None:
            vis = torch.cat((vis, torch.zeros(k.shape[1], dtype=torch.bool)))
        s, n_local = self.answer_sinks, self.cfg.n_local
        if ak.shape[1] > s + n_local:
            ak = torch.cat((ak[:, :s], ak[:, -n_local:]), dim=1)
            av = torch.cat((av[:, :s], av[:, -n_local:]), dim=1)
            vis = None if vis is None else torch.cat((vis[:s], vis[-n_local:]))
        self.answer_k, self.answer_v, self.answer_visual = ak, av, vis
        return out

    def end_answer(self) -> None:
        self.answer_k = self.answer_v = self.answer_visual = None
        self.answer_sinks = 0

    def _answer_attention(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None) -> Tensor:
        """``q`` over ``[answer cache ; own k, v]`` with positions renumbered from 0 (quirk Q7); with
        ``keep`` only those entries, each at its own position."""
        n_local = self.cfg.n_local
        seq_k = torch.cat((self.answer_k, k.to(self.dtype)), dim=1)
        seq_v = torch.cat((self.answer_v, v.to(self.dtype)), dim=1)
        total, lq = seq_k.shape[1], q.shape[1]
        w0 = total - min(total, lq + n_local)
        qabs = torch.arange(total - lq, total, device=q.device)
        kidx = torch.arange(w0, total, device=q.device)
        wk, wv = seq_k[:, w0:], seq_v[:, w0:]
        if keep is not None:
            kidx = kidx[torch.isin(kidx, keep.to(q.device))]
            wk, wv = seq_k[:, kidx], seq_v[:, kidx]
        sink_k = sink_v = sink_mask = None
        if total > n_local and self.answer_sinks:
            sidx = torch.arange(self.answer_sinks, device=q.device)
            if keep is not None:
                sidx = sidx[torch.isin(sidx, keep.to(q.device))]
            sink_k, sink_v = seq_k[:, sidx], seq_v[:, sidx]
            sink_mask = (qabs[:, None] - sidx[None]) >= n_local
        return window_sink_attention(
            q, wk, wv, qabs - w0, kidx - w0, n_local, self.freqs, sink_k, sink_v, sink_mask,
            **self._answer_rope(w0, lq, kidx - w0),
        )  # fmt: skip
