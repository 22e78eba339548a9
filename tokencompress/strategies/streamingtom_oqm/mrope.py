"""StreamingTOM's memory (OQM) on Qwen's 3-D M-RoPE decoders (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

The 1-D memory numbers a chunk and the answer on one axis. Under M-RoPE a token's position is
``(t, h, w)`` (the target's own rope index, read from the stream's position log) and a chunk holds
rows that are not frame tokens (``<|vision_start|>``/``<|vision_end|>``, Qwen3-VL's timestamp text).
Every position below is decided in :mod:`.positions`, by the project's one scheme for retrieved
memory (:func:`tokencompress.api.memory_positions.retrieved_positions`):

* **Store.** As on one axis: a chunk's *visual* rows are quantised in groups (keys after rotation,
  as the decoder's cache would hold them), their pre-RoPE group keys kept for retrieval. The other
  rows of a chunk travel with one of its frames (the frame whose visual rows come next, or the
  chunk's last frame; :func:`~tokencompress.api.memory_positions.row_frames`, as ReKV files them)
  and are kept **unquantised** next to it: a handful of rows per chunk, and a delimiter or a
  timestamp rounded to 16 levels would change what every later token reads.
* **Encoding.** A chunk attends ``[prompt ; window groups ; the extra rows of the window's
  frames]`` and itself, causally, at its stream positions moved by one shift ``sigma``
  (:func:`~.positions.encode_shift`: ``positions: window`` closes up the frames that left the
  window, the reference's ``n_init + len(window)`` in the scheme's terms; ``absolute`` keeps the
  stream's own). ``window_tokens`` counts visual rows only.
* **Question.** Each layer's groups come back with their frames placed by the scheme (a frame
  with any group retrieved is placed whole, its extra rows with it); stored keys are moved to
  their place by one rotation (:func:`~.positions.shift_keys`). The answer cache is
  ``[prompt ; retrieved groups (time order) ; their frames' extra rows]`` and the prompt and
  answer continue from the scheme's question position on all axes.

With the memory holding the whole video (window and budget cover it), every shift is 0: the
chunks, the question and the answer sit at the plain stream's own positions and only the
quantisation of the stored rows separates the answer from the plain stream's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...api.kv_cache import DecoderLayout, Phase
from ...api.memory_positions import (
    CallPositionLog,
    FrameSpan,
    frame_advances,
    retrieved_positions,
    row_frames,
    text_positions,
)
from ...api.target import LLMState, Target
from .attention import attend
from .layer import OQMLayer, OQMSettings, QuestionInfo
from .memory import StreamingTomOqmMemory
from .positions import RopeFn, encode_shift, question_positions_3d, rope_3d, shift_keys

__all__ = ["CallRows", "OQMMRoPELayer", "OQMMRoPEMemory", "Placement"]


@dataclass(frozen=True)
class CallRows:
    """What every layer needs to know about one encode call of ``L`` rows."""

    pos: Tensor
    """``[3, L]`` positions the call is encoded at (stream positions + ``sigma``)."""
    visual: Tensor
    """``[L]`` bool: the row is a frame token (False: delimiter, timestamp text, or prompt)."""
    frame: Tensor
    """``[L]`` long: the frame each row belongs to (-1: prompt)."""
    window_frames: int
    """First frame with a group in the encoding window (its extra rows are attended)."""


@dataclass(frozen=True)
class Placement:
    """Where a layer's retrieved memory sits at a question."""

    positions: Tensor
    """``[3, P]`` of ``[prompt ; retrieved groups' rows ; their frames' extra rows]``."""
    shifts: Tensor
    """``[P]`` placed minus encoded position of every row (0 for the prompt)."""
    frames: list[int]
    """Frames with a retrieved group, in time order (whose extra rows follow the groups)."""
    question: int
    """Where the question's text starts (all axes)."""


class OQMMRoPELayer(OQMLayer):
    """A layer's memory with 3-D positions and per-frame extra rows."""

    rotary: RopeFn | None = None
    """The target's rotary (``positions [3, L] -> cos, sin``), set by the memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side_k: list[Tensor] = []  # per frame: [kvh, n, d] extra rows, rotated as encoded
        self.side_v: list[Tensor] = []
        self.answer_next = 0

    def snapshot(self) -> dict[str, Any]:
        fields = super().snapshot()
        fields["side_k"], fields["side_v"] = list(self.side_k), list(self.side_v)
        return fields

    def _rot(self, x: Tensor, positions: Tensor) -> Tensor:
        assert self.rotary is not None, "streamingtom_oqm (M-RoPE): the layer has no rotary"
        return rope_3d(x, positions.to(x.device), self.rotary)

    def sides(self, frames: Iterable[int]) -> tuple[Tensor, Tensor]:
        """The extra rows of ``frames`` (in the order given), keys as encoded."""
        ks = [self.side_k[f] for f in frames]
        vs = [self.side_v[f] for f in frames]
        return torch.cat([self.init_k[:, :0], *ks], 1), torch.cat([self.init_v[:, :0], *vs], 1)

    def side_rows(self, first: int) -> int:
        return sum(int(k.shape[1]) for k in self.side_k[first:])

    # --------------------------------------------------------------- encoding
    def encode_prompt_at(self, q: Tensor, k: Tensor, v: Tensor, pos: Tensor) -> Tensor:
        """Text before the first frame at ``pos`` ``[3, L]``: attends the prompt so far, then joins it."""
        kr = self._rot(k, pos).to(self.dtype)
        keys, values = torch.cat((self.init_k, kr), 1), torch.cat((self.init_v, v.to(self.dtype)), 1)
        out = attend(self._rot(q, pos), keys, values)
        self.init_k, self.init_v = keys, values
        return out

    def encode_chunk_at(self, q: Tensor, k: Tensor, v: Tensor, rows: CallRows) -> Tensor:
        """A chunk over ``[prompt ; window groups ; window frames' extra rows]`` and itself; then its
        visual rows are stored as groups and its extra rows kept with their frames."""
        past_k, past_v = self.window()
        side_k, side_v = self.sides(range(rows.window_frames, len(self.side_k)))
        kr = self._rot(k, rows.pos).to(self.dtype)
        vv = v.to(self.dtype)
        keys = torch.cat((past_k, side_k, kr), 1)
        values = torch.cat((past_v, side_v, vv), 1)
        out = attend(self._rot(q, rows.pos), keys, values)
        vis = rows.visual.to(k.device)
        if bool(vis.any()):
            self.store_chunk(k[:, vis], kr[:, vis], vv[:, vis])
        for f in torch.unique(rows.frame).tolist():
            if f < 0:
                continue
            if f != len(self.side_k):
                raise RuntimeError(f"streamingtom_oqm (M-RoPE): frame {f} filed out of order")
            extra = (~rows.visual & (rows.frame == f)).to(k.device)
            self.side_k.append(kr[:, extra])
            self.side_v.append(vv[:, extra])
        return out

    # --------------------------------------------------------------- questions
    def question_at(
        self, q: Tensor, k: Tensor, v: Tensor, place: Callable[[Tensor], Placement]
    ) -> tuple[Tensor, QuestionInfo]:
        """Select, place the memory by the scheme, start the answer cache, run the retrieval pass."""
        sel, rep = self.select(q)
        where = place(sel.indices)
        gk, gv = self.groups_kv(sel.indices)
        sk, sv = self.sides(where.frames)
        stored_k = torch.cat((self.init_k, gk.to(self.dtype), sk), 1)
        stored_v = torch.cat((self.init_v, gv.to(self.dtype), sv), 1)
        if stored_k.shape[1] != where.positions.shape[1]:
            raise RuntimeError("streamingtom_oqm (M-RoPE): positions out of step with the retrieved rows")
        assert self.rotary is not None
        self.answer_k, self.answer_v = shift_keys(stored_k, where.shifts, self.rotary), stored_v
        self.answer_next = where.question
        at = question_positions_3d(where.positions, where.question, q.shape[1], self.cfg.retrieval_pass)
        mem_k = self.answer_k if at.memory is None else self._rot(stored_k, at.memory)
        keys = torch.cat((mem_k.to(torch.float32), self._rot(k, at.question_keys)), 1)
        values = torch.cat((stored_v.to(torch.float32), v.to(torch.float32)), 1)
        out = attend(self._rot(q, at.query), keys, values, at.align)
        return out, QuestionInfo(sel, rep, stored_k.shape[1])

    def answer(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A prompt or decode step continuing from the question position on all axes."""
        if self.answer_k is None or self.answer_v is None:
            raise RuntimeError(
                "streamingtom_oqm: prompt/decode step without a question (call question() first)"
            )
        pos = text_positions(self.answer_next, q.shape[1], 3, q.device)
        kr = self._rot(k, pos).to(self.dtype)
        keys = torch.cat((self.answer_k, kr), 1)
        values = torch.cat((self.answer_v, v.to(self.dtype)), 1)
        out = attend(self._rot(q, pos), keys, values)
        self.answer_k, self.answer_v = keys, values
        self.answer_next += q.shape[1]
        return out

    def end_answer(self) -> None:
        super().end_answer()
        self.answer_next = 0

    def device_bytes(self) -> int:
        sides = sum(t.numel() * t.element_size() for t in (*self.side_k, *self.side_v))
        return super().device_bytes() + sides


class OQMMRoPEMemory(CallPositionLog, StreamingTomOqmMemory):
    """StreamingTOM's memory on an M-RoPE decoder: the 1-D memory plus positions shared by every layer."""

    layer_class = OQMMRoPELayer
    owner = "streamingtom_oqm"
    logs_positions = True
    wants_visual_rows = True
    shared: ClassVar[tuple[str, ...]] = ("_log",)

    def __init__(
        self, settings: OQMSettings, target: Target, layout: DecoderLayout, frame_groups: int
    ) -> None:
        super().__init__(settings, target, layout, frame_groups)
        for mem in self.layers:
            mem.rotary = target.rope_cos_sin  # type: ignore[attr-defined]
        self._rows: CallRows | None = None
        self.sink_pos = torch.zeros(3, 0, dtype=torch.long)
        self.frame_pos: list[Tensor] = []  # per frame: [3, tokens a frame] stream positions, visual rows
        self.frame_side: list[Tensor] = []  # per frame: [3, n] stream positions of its extra rows
        self.frame_start: list[int] = []
        self.frame_shift: list[int] = []  # per frame: sigma it was encoded with
        self.visual_seen = 0
        self.next_position = 0

    # ----------------------------------------------------------- encoding
    def _call_rows(self, length: int) -> CallRows:
        """Positions, visual mask and frame of every row of the encode call now starting."""
        pos, mask = self.logged_call(length)
        if not self.started:  # the prompt: every row is a sink
            self.sink_pos = torch.cat((self.sink_pos, pos), dim=1)
            return CallRows(pos, torch.zeros(length, dtype=torch.bool), torch.full((length,), -1), 0)
        first = self.layers[0].window_start() // self.frame_groups
        window = [(self._frame_rows(f), self.frame_start[f]) for f in range(first, len(self.frame_pos))]
        sigma = encode_shift(self.sink_pos, window, int(pos.min()), self.settings.positions)
        frame = row_frames(mask, self.visual_seen, self.frame_groups * self.settings.group_size)
        for f in torch.unique(frame).tolist():
            if f != len(self.frame_pos):
                raise RuntimeError(
                    f"streamingtom_oqm (M-RoPE): frame {f} of a chunk is split across chunks; chunks hold "
                    f"whole frames"
                )
            vis, side = pos[:, mask & (frame == f)], pos[:, ~mask & (frame == f)]
            self.frame_pos.append(vis)
            self.frame_side.append(side)
            self.frame_start.append(int(torch.cat((vis, side), dim=1).min()))
            self.frame_shift.append(sigma)
        self.visual_seen += int(mask.sum())
        return CallRows(pos + sigma, mask, frame, first)

    def _frame_rows(self, f: int) -> Tensor:
        return torch.cat((self.frame_pos[f], self.frame_side[f]), dim=1)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        mem = self.layers[layer]
        assert isinstance(mem, OQMMRoPELayer)
        if self.phase is Phase.ENCODE:
            if layer == 0:
                self._rows = self._call_rows(q.shape[1])
            rows = self._rows
            assert rows is not None
            if layer == len(self.layers) - 1:
                self._rows = None
            if not self.started:
                return mem.encode_prompt_at(q, k, v, rows.pos)
            return mem.encode_chunk_at(q, k, v, rows)
        if self.phase is Phase.RETRIEVE:
            out, self.infos[layer] = mem.question_at(q, k, v, self.placement)
            return out
        return mem.answer(q, k, v)

    # ----------------------------------------------------------- questions
    def retrieve(self, target: Target, llm: LLMState, ids, frames: list[int] | None = None) -> None:  # type: ignore[no-untyped-def, override]
        self.next_position = llm.next_position  # where the stream itself would continue
        super().retrieve(target, llm, ids, frames)

    def placement(self, groups: Tensor) -> Placement:
        """Positions of ``[prompt ; groups (ascending) ; their frames' extra rows]`` by the scheme."""
        per, g = self.frame_groups, self.settings.group_size
        ids = [int(i) for i in groups.tolist()]
        frames = sorted({i // per for i in ids})
        advance = frame_advances(self.frame_start, self.next_position)
        spans = [FrameSpan(self._frame_rows(f), self.frame_start[f], advance[f]) for f in frames]
        placed = retrieved_positions(self.sink_pos, spans)
        move = {
            f: int((new - span.positions)[0, 0])
            for f, new, span in zip(frames, placed.frames, spans, strict=True)
        }
        parts, shifts = [self.sink_pos], [torch.zeros(self.sink_pos.shape[1], dtype=torch.long)]
        for i in ids:
            f, j = i // per, i % per
            parts.append(self.frame_pos[f][:, j * g : (j + 1) * g] + move[f])
            shifts.append(torch.full((g,), move[f] - self.frame_shift[f]))
        for f in frames:
            parts.append(self.frame_side[f] + move[f])
            shifts.append(torch.full((self.frame_side[f].shape[1],), move[f] - self.frame_shift[f]))
        return Placement(torch.cat(parts, dim=1), torch.cat(shifts), frames, placed.question)

    # -------------------------------------------------------------- footprint
    def resident_tokens(self, llm: LLMState) -> int:
        """The prompt plus what the next chunk attends (window groups and their frames' extra rows),
        or the answer cache."""
        first = self.layers[0] if self.layers else None
        if not isinstance(first, OQMMRoPELayer):
            return 0
        if first.answer_k is not None:
            return first.answer_k.shape[1]
        start = first.window_start()
        g = self.settings.group_size
        return first.n_init + first.stored_tokens - start * g + first.side_rows(start // self.frame_groups)
