"""One decoder call under an in_decoder strategy: ranking at each boundary, the gather, positions, masks.

A :class:`CallRun` is opened by the layer-0 hook of :class:`~.in_decoder.InDecoderPatch` and handed
every later hooked layer's arguments. It keeps, for the rows still present (``rows``: indices into
the call's rows, ascending), the ``(cos, sin)`` and position ids the next layers get, and the
visual spans with their rows in current coordinates. At a boundary it ranks each span by the
attention its ranking rows pay its visual rows (softmax in float32, mean over heads, then over the
ranking rows), keeps the strategy's count, and either gathers the hidden states (``drop``) or hides
the dropped rows as keys from the later layers (``mask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..api.in_decoder import InDecoderState, Span

__all__ = ["CallRun", "Preview", "RankRecord", "layer_length"]


class Preview(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Stops a boundary layer's attention module once its ranking row has been read."""

    def __init__(self, record: RankRecord) -> None:
        super().__init__("in_decoder preview")
        self.record = record


@dataclass(frozen=True)
class RankRecord:
    """What one boundary ranked with: per span the ``[H, R, S]`` softmax rows of its ranking rows over
    the ``S`` keys the layer saw, and the key column of the call's first current row."""

    heads: list[Tensor]
    offset: int

    def scores(self, span: int) -> Tensor:
        """``[S]``: mean over heads, then over ranking rows."""
        return self.heads[span].mean(dim=0).mean(dim=0)


def layer_length(cache: Any, index: int) -> int:
    """Entries layer ``index`` of a transformers cache holds (0 without one)."""
    layers = getattr(cache, "layers", None) if cache is not None else None
    if layers is None or index >= len(layers):
        return 0
    return int(layers[index].get_seq_length())


def _cache(kwargs: dict) -> Any:
    return kwargs.get("cache", kwargs.get("past_key_values"))


class CallRun:
    """The state of one decoder call while its layers run (see the module docstring)."""

    def __init__(
        self, patch: Any, state: InDecoderState, spans: list[Span], kwargs: dict, length: int
    ) -> None:
        """``patch``: the :class:`~.in_decoder.InDecoderPatch` that opened the run (its strategy,
        boundaries, decoder stack, attention implementation and ``record`` flag)."""
        assert patch.strategy is not None and patch.stack is not None
        self.patch, self.strategy, self.bounds = patch, patch.strategy, patch.bounds
        self.stack = patch.stack
        self.state = state
        self.spans = spans
        self.rows = torch.arange(length)
        self.length = length
        self.pe = kwargs.get("position_embeddings")
        self.pos = kwargs.get("position_ids")
        self.past0 = layer_length(_cache(kwargs), 0)
        self.prior = list(state.dropped)
        self.by_layer = {b.layer: i for i, b in enumerate(self.bounds)}
        self.records: dict[int, RankRecord] = {}
        self.kept: dict[int, Tensor] = {}
        """Per boundary crossed with spans: the call's rows that went on (drop) or stayed visible (mask)."""
        self.inputs: dict[int, tuple[Tensor, Tensor | None]] = {}
        """Per boundary: the hidden states and position ids that reached it (before the drop)."""
        self.selected: dict[int, list[Tensor]] = {}
        """Per boundary and span: the kept entries among the span's rows at that boundary."""
        self.preview_layer: int | None = None
        self.eager = patch.inner == "eager"
        self.hidden_cols: Tensor | None = None
        if self.strategy.mode == "mask":
            cols = torch.zeros(self.past0 + length, dtype=torch.bool)
            if state.hidden is not None:
                n = min(self.past0, state.hidden.numel())
                cols[:n] = state.hidden[:n]
            self.hidden_cols = cols
        for span in spans:
            if self.strategy.mode == "drop" and span.rows.numel() and int(span.rows.min()) < 0:
                raise ValueError("in_decoder: a span's rows must lie in the call in drop mode")

    # ------------------------------------------------------------------ layers
    def enter(self, index: int, args: tuple, kwargs: dict) -> Any:
        if index == 0:
            return None
        hidden = args[0] if args else kwargs.pop("hidden_states")
        b = self.by_layer.get(index)
        if b is not None:
            hidden = self._cross(b, index, hidden, kwargs)
        if self.pe is not None and kwargs.get("position_embeddings") is not None:
            kwargs["position_embeddings"] = self.pe
        if self.pos is not None and kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = self.pos
        kwargs["attention_mask"] = self._mask(index, kwargs, hidden)
        return (hidden, *args[1:]), kwargs

    def _cross(self, b: int, index: int, hidden: Tensor, kwargs: dict) -> Tensor:
        """Boundary ``b`` before layer ``index``: rank, drop or hide, and move positions to the next stage."""
        if self.patch.record:
            self.inputs[b] = (hidden, self.pos)
        dropped = torch.zeros(hidden.shape[1], dtype=torch.bool)
        if self.spans:
            record = self._record(b, index, hidden)
            dropped = self._choose(b, record, hidden.shape[1])
        if self.strategy.mode == "mask":
            return hidden
        keep = torch.nonzero(~dropped).flatten()
        if bool(dropped.any()):
            hidden = hidden.index_select(1, keep.to(hidden.device))
            self.rows = self.rows[keep]
            self.spans = [self._moved(span, keep) for span in self.spans]
            if self.pe is not None:
                self.pe = tuple(t.index_select(-2, keep.to(t.device)) for t in self.pe)
            if self.pos is not None:
                before = torch.cumsum(dropped.long(), 0)[keep].to(self.pos.device)
                self.pos = self.pos.index_select(-1, keep.to(self.pos.device))
                if self.strategy.positions == "renumber":
                    self.pos = self.pos - before
            self.state.dropped[b] += int(dropped.sum())
        if self.strategy.mode == "drop":
            self._present(b)
        if self.strategy.positions == "renumber":
            self._renumber(b, hidden)
        return hidden

    def _present(self, b: int) -> None:
        """Record which of this call's rows the layers from boundary ``b`` on hold (layer-0 indices)."""
        maps = self.state.present
        while len(maps) <= b:
            maps.append(torch.ones(0, dtype=torch.bool))
        old = maps[b][: self.past0]
        if old.numel() < self.past0:  # entries prefilled outside a scope: held by every layer
            old = torch.cat([old, torch.ones(self.past0 - old.numel(), dtype=torch.bool)])
        mine = torch.zeros(self.length, dtype=torch.bool)
        mine[self.rows] = True
        maps[b] = torch.cat([old, mine])

    def _renumber(self, b: int, hidden: Tensor) -> None:
        if self.pos is None or self.stack.rotary is None:
            raise RuntimeError(
                "in_decoder: positions: renumber needs the decoder's 1-D position ids and rotary"
            )
        if self.prior[b]:
            self.pos = self.pos - self.prior[b]
        self.pe = tuple(self.stack.rotary(hidden, self.pos))

    def _record(self, b: int, index: int, hidden: Tensor) -> RankRecord:
        if self.bounds[b].source == "previous_attention":
            record = self.records.get(b)
            if record is None:
                raise RuntimeError(f"in_decoder: the attention of decoder layer {index - 1} was not observed")
            return record
        record = self._preview(index, hidden)
        self.records[b] = record
        return record

    def _choose(self, b: int, record: RankRecord, length: int) -> Tensor:
        """``[length]`` bool: the rows of the call dropped at boundary ``b`` (all spans together)."""
        dropped = torch.zeros(length, dtype=torch.bool)
        kept_all = []
        for i, span in enumerate(self.spans):
            if not span.rows.numel():
                continue
            scores = record.scores(i)[span.rows.to(record.heads[i].device) + record.offset]
            k = max(1, self.strategy.keep(span.original, b))
            local = self.strategy.select(scores.cpu(), k)
            self.selected.setdefault(b, []).append(local)
            gone = torch.ones(span.rows.numel(), dtype=torch.bool)
            gone[local] = False
            kept_all.append(span.rows[local])
            if self.strategy.mode == "mask":
                assert self.hidden_cols is not None
                self.hidden_cols[span.rows[gone] + self.past0] = True
            else:
                dropped[span.rows[gone]] = True
        if self.strategy.mode == "mask":
            self.state.hidden = self.hidden_cols.clone() if self.hidden_cols is not None else None
        kept = torch.cat(kept_all) if kept_all else torch.zeros(0, dtype=torch.long)
        self.kept[b] = torch.sort(kept).values if self.strategy.mode == "mask" else self.rows[~dropped]
        self.state.last_kept = [
            self.kept.get(i, torch.zeros(0, dtype=torch.long)) for i in range(len(self.bounds))
        ]
        return dropped

    @staticmethod
    def _moved(span: Span, keep: Tensor) -> Span:
        rows = torch.searchsorted(keep, span.rows)
        present = (rows < keep.numel()) & (keep[rows.clamp(max=keep.numel() - 1)] == span.rows)
        start = int(torch.searchsorted(keep, torch.tensor(span.segment[0])))
        end = int(torch.searchsorted(keep, torch.tensor(span.segment[1])))
        return Span(rows[present], (start, end), span.original)

    # ------------------------------------------------------------------ ranking
    def observe(self, module: nn.Module, query: Tensor, key: Tensor) -> None:
        index = getattr(module, "layer_idx", None)
        if index is None:
            return
        if self.preview_layer is not None:
            if index == self.preview_layer:
                raise Preview(self._rank(query, key, float(module.scaling)))
            return
        b = self.by_layer.get(index + 1)
        if b is not None and self.spans and self.bounds[b].source == "previous_attention":
            self.records[b] = self._rank(query, key, float(module.scaling))

    def _preview(self, index: int, hidden: Tensor) -> RankRecord:
        """Layer ``index``'s own attention module on the boundary's hidden states, stopped once its
        attention function has read q and k (no cache, no values used)."""
        layer = self.stack.layers[index]
        attn = layer.self_attn
        self.preview_layer = int(attn.layer_idx)
        try:
            attn(
                hidden_states=layer.input_layernorm(hidden), position_embeddings=self.pe, attention_mask=None
            )
        except Preview as got:
            return got.record
        finally:
            self.preview_layer = None
        raise RuntimeError(
            f"in_decoder: decoder layer {index}'s attention did not reach its attention function"
        )

    def _rank(self, query: Tensor, key: Tensor, scaling: float) -> RankRecord:
        """Per span, the softmax rows of its ranking rows over every key (causal), in float32."""
        heads, kv_heads = query.shape[1], key.shape[1]
        past = key.shape[-2] - query.shape[-2]
        keys = key[0].float()
        if kv_heads != heads:
            keys = keys.repeat_interleave(heads // kv_heads, dim=0)
        out = []
        columns = torch.arange(key.shape[-2], device=key.device)
        for span in self.spans:
            start, end = span.segment
            if self.strategy.rank_rows == "mean":
                rows = torch.arange(start, end, device=query.device)
            else:
                rows = torch.tensor([end - 1], device=query.device)
            q = query[0][:, rows].float()
            logits = torch.matmul(q, keys.transpose(-1, -2)) * scaling
            allowed = columns[None, :] <= rows[:, None] + past
            logits = logits.masked_fill(~allowed[None], float("-inf"))
            out.append(torch.softmax(logits, dim=-1))
        return RankRecord(out, past)

    # ------------------------------------------------------------------ masks
    def _mask(self, index: int, kwargs: dict, hidden: Tensor) -> Tensor | None:
        """The layer's mask for its own key count (its cache may be shorter than layer 0's)."""
        mask = kwargs.get("attention_mask")
        q = hidden.shape[1]
        past = layer_length(_cache(kwargs), index)
        hide = self.hidden_cols if self.hidden_cols is not None and bool(self.hidden_cols.any()) else None
        if hide is None:
            if mask is None and (past == 0 or q == 1):
                return None
            if mask is not None and tuple(mask.shape[-2:]) == (q, past + q):
                return mask
        device = hidden.device
        allowed = (
            torch.arange(past + q, device=device)[None, :] <= torch.arange(q, device=device)[:, None] + past
        )
        if hide is not None:
            allowed = allowed & ~hide[: past + q].to(device)[None, :]
        allowed = allowed[None, None]
        if self.eager or (mask is not None and mask.dtype != torch.bool):
            dtype = mask.dtype if mask is not None and mask.is_floating_point() else hidden.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        return allowed
