"""ReKV on Qwen's 3-D M-RoPE decoders (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

The 1-D memory numbers every token by its index in the stream. Under M-RoPE a token's position
is ``(t, h, w)``, set by the target from the model's own rope index, and a chunk holds rows that
are not frame tokens (``<|vision_start|>``/``<|vision_end|>``, Qwen3-VL's timestamp text). So:

* **Positions.** Every encode call's 3-D positions come from the stream's position log (the
  memory sets ``logs_positions``); keys stay pre-RoPE as in the 1-D memory and are rotated per
  call by the target's own rotary function (:meth:`~tokencompress.api.target.Target.rope_cos_sin`,
  so Qwen3-VL's interleaved layout is the model's). The window mask still counts tokens; window
  rotations use the tokens' positions minus one scalar (relative, so float32 stays exact); the
  sinks outside the window sit at ``n_local - 1`` on all three axes (the 1-D fixed angle).
* **Frame blocks and their extra rows.** Blocks hold ``block_size`` visual rows (the target's
  visual-row mask says which), so the block store and the retrieval are unchanged. Every other
  row of a chunk travels with one frame of the chunk: the frame whose visual rows come next, or
  the chunk's last frame for rows after its last visual row (with one slice per chunk every
  ``[timestamp] <|vision_start|> ... <|vision_end|>`` group stays whole). Those rows' keys and
  values are kept per frame next to the block and come back with it.
* **Question time.** The answer cache is ``[sinks ; retrieved frames (visual rows, then their
  extra rows)]`` and its positions come from
  :func:`tokencompress.api.memory_positions.retrieved_positions`: each frame moved as a whole on
  all axes, frames back to back in time order after the sinks, the question after the memory's
  largest position. With every frame retrieved that is exactly the plain stream's layout.
  Prompt and decode rows continue from there on all axes; once the answer cache is trimmed
  (past ``n_local`` answer tokens) positions are kept, not renumbered (the 1-D memory
  reproduces the reference's renumbering there, quirk Q7).
"""

from __future__ import annotations

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
from .layer import ReKVLayer, ReKVSettings
from .memory import ReKVMemory

__all__ = ["CallRows", "ReKVMRoPELayer", "ReKVMRoPEMemory"]


@dataclass(frozen=True)
class CallRows:
    """What every layer needs to know about one encode call of ``L`` rows."""

    pos: Tensor
    """``[R, W + L]`` positions of ``[window ; call]`` (the window as it was before the call)."""
    visual: Tensor
    """``[L]`` bool: the row is a frame token (False: delimiter, timestamp text, or a sink)."""
    frame: Tensor
    """``[L]`` long: the frame each row after the sinks belongs to."""


class ReKVMRoPELayer(ReKVLayer):
    """A layer's memory with 3-D positions and per-frame extra rows."""

    rope: Any = None
    """``positions [3, L] -> (cos, sin) [L, d]``, set by the memory (the target's rotary)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side_k: list[Tensor] = []  # per frame: [kvh, n, d] rows that travel with it
        self.side_v: list[Tensor] = []
        self.answer_pos: Tensor | None = None
        self.answer_next = 0
        self._rows: tuple[int, CallRows] | None = None

    def snapshot(self) -> dict[str, Any]:
        fields = super().snapshot()
        fields["side_k"], fields["side_v"] = list(self.side_k), list(self.side_v)
        return fields

    def _begin_call(self, start: int, rows: Any) -> None:
        self._rows = None if rows is None else (start, rows)

    def _window_rope(self, a: int, qa: int, b: int) -> dict[str, Any]:
        assert self._rows is not None, "rekv (M-RoPE): an encode call without its positions"
        pos = self._rows[1].pos
        base = pos[:, a:b].min()
        keys, queries = (pos[:, a:b] - base).to(self.device), (pos[:, qa:b] - base).to(self.device)
        return {"rope": self.rope, "query_rope": queries, "key_rope": keys}

    def _file_frames(self, k: Tensor, v: Tensor, first: int) -> None:
        assert self._rows is not None, "rekv (M-RoPE): an encode call without its positions"
        start, rows = self._rows
        i = first - start
        visual = rows.visual[i : i + k.shape[1]].to(k.device)
        frames = rows.frame[i : i + k.shape[1]]
        super()._file_frames(k[:, visual], v[:, visual], first)
        for f in torch.unique(frames[~visual.cpu()]).tolist():
            while len(self.side_k) <= f:
                empty = torch.zeros(self.kvh, 0, self.d, dtype=self.dtype, device=self.device)
                self.side_k.append(empty)
                self.side_v.append(empty)
            sel = (~visual.cpu() & (frames == f)).to(k.device)
            self.side_k[f] = torch.cat((self.side_k[f], k[:, sel].to(self.dtype)), dim=1)
            self.side_v[f] = torch.cat((self.side_v[f], v[:, sel].to(self.dtype)), dim=1)

    def _side(self, f: int) -> tuple[Tensor, Tensor]:
        if f < len(self.side_k):
            return self.side_k[f], self.side_v[f]
        empty = torch.zeros(self.kvh, 0, self.d, dtype=self.dtype, device=self.device)
        return empty, empty

    def _start_answer(self, branch: str, ids: Tensor, place: Any) -> None:
        super()._start_answer(branch, ids, place)
        assert self.answer_k is not None and self.answer_v is not None
        sides = [self._side(int(f)) for f in ids.tolist()]
        self.answer_k = torch.cat([self.answer_k, *(s[0] for s in sides)], dim=1)
        self.answer_v = torch.cat([self.answer_v, *(s[1] for s in sides)], dim=1)
        rows = sum(s[0].shape[1] for s in sides)  # delimiter / timestamp rows: not video
        self.answer_visual = torch.cat((self.answer_visual, torch.zeros(rows, dtype=torch.bool)))
        self.answer_pos, self.answer_next = place(ids)
        assert self.answer_pos.shape[1] == self.answer_k.shape[1], "rekv (M-RoPE): positions out of step"

    def _call_positions(self, lq: int) -> Tensor:
        assert self.answer_pos is not None
        new = text_positions(self.answer_next, lq, self.answer_pos.shape[0], self.answer_pos.device)
        return torch.cat((self.answer_pos, new), dim=1)

    def _answer_rope(self, w0: int, lq: int, cols: Tensor) -> dict[str, Any]:
        keys = self._call_positions(lq)[:, w0:]
        base = keys.min()
        return {"rope": self.rope, "query_rope": keys[:, -lq:] - base, "key_rope": keys[:, cols] - base}

    def answer(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None) -> Tensor:
        out = super().answer(q, k, v, keep)
        assert self.answer_k is not None
        pos = self._call_positions(q.shape[1])
        s, n = self.answer_sinks, self.answer_k.shape[1]
        self.answer_pos = pos if pos.shape[1] == n else torch.cat((pos[:, :s], pos[:, -(n - s) :]), dim=1)
        self.answer_next += q.shape[1]
        return out

    def end_answer(self) -> None:
        super().end_answer()
        self.answer_pos, self.answer_next = None, 0


class ReKVMRoPEMemory(CallPositionLog, ReKVMemory):
    """ReKV on an M-RoPE decoder: the 1-D memory plus positions shared by every layer."""

    layer_class = ReKVMRoPELayer
    owner = "rekv"
    logs_positions = True
    wants_visual_rows = True
    appended: ClassVar[tuple[str, ...]] = ("frame_pos", "frame_side", "frame_start")
    shared: ClassVar[tuple[str, ...]] = ("_log",)

    def __init__(self, settings: ReKVSettings, target: Target, layout: DecoderLayout) -> None:
        super().__init__(settings, target, layout)
        for mem in self.layers:
            mem.rope = target.rope_cos_sin  # type: ignore[attr-defined]
        self._rows: CallRows | None = None
        self.sink_pos = torch.zeros(3, 0, dtype=torch.long)
        self.win_pos = torch.zeros(3, 0, dtype=torch.long)
        self.visual_seen = 0
        self.frame_pos: list[Tensor] = []  # per frame: [3, block_size] positions of its visual rows
        self.frame_side: list[Tensor] = []  # per frame: [3, n] positions of its extra rows
        self.frame_start: list[int] = []
        self.next_position = 0

    # ----------------------------------------------------------- encoding
    def _call_rows(self, length: int) -> CallRows:
        """Positions, visual mask and frame of every row of the encode call now starting."""
        pos, mask = self.logged_call(length)
        frame = torch.full((length,), -1, dtype=torch.long)
        if self.layers[0].n_init is None:  # the system prompt: every row is a sink
            self.sink_pos = torch.cat((self.sink_pos, pos), dim=1)
        else:
            frame = self._assign_frames(pos, mask)
        return CallRows(torch.cat((self.win_pos, pos), dim=1), mask, frame)

    def _assign_frames(self, pos: Tensor, mask: Tensor) -> Tensor:
        frame = row_frames(mask, self.visual_seen, self.settings.block_size)
        for f in torch.unique(frame).tolist():
            if f != len(self.frame_pos):
                raise RuntimeError(
                    f"rekv (M-RoPE): frame {f} of a chunk is split across chunks; chunks hold whole frames"
                )
            vis, side = pos[:, mask & (frame == f)], pos[:, ~mask & (frame == f)]
            self.frame_pos.append(vis)
            self.frame_side.append(side)
            self.frame_start.append(int(torch.cat((vis, side), dim=1).min()))
        self.visual_seen += int(mask.sum())
        return frame

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        mem = self.layers[layer]
        if self.phase is Phase.ENCODE:
            if layer == 0:
                self._rows = self._call_rows(q.shape[1])
            assert self._rows is not None
            out = mem.encode(q, k, v, self._rows)
            if layer == len(self.layers) - 1:
                self.win_pos = self._rows.pos[:, self._rows.pos.shape[1] - mem.win_k.shape[1] :]
                self._rows = None
            return out
        if self.phase is Phase.RETRIEVE:
            out, self.infos[layer] = mem.question(q, k, v, self.external, self.placement)
            return out
        return self._answer(layer, q, k, v)

    # ----------------------------------------------------------- questions
    def retrieve(self, target: Target, llm: LLMState, ids: Tensor, frames: list[int] | None = None) -> None:  # type: ignore[override]
        self.next_position = llm.next_position  # where the stream itself would continue
        super().retrieve(target, llm, ids, frames)

    def placement(self, ids: Tensor) -> tuple[Tensor, int]:
        """Positions of ``[sinks ; visual rows of ids ; extra rows of ids]`` and the question's start."""
        advance = frame_advances(self.frame_start, self.next_position)
        order = ids.tolist()
        spans = [
            FrameSpan(
                torch.cat((self.frame_pos[f], self.frame_side[f]), dim=1), self.frame_start[f], advance[f]
            )
            for f in order
        ]
        placed = retrieved_positions(self.sink_pos, spans)
        bs = self.settings.block_size
        parts = [placed.sinks, *(p[:, :bs] for p in placed.frames), *(p[:, bs:] for p in placed.frames)]
        return torch.cat(parts, dim=1).to(self.layers[0].device), placed.question
