"""The ``run`` command's streaming loop: whatever happens part-way, what was processed is kept.

Decoding is driven here (not through ``Stream.add_video``) so the loop knows, at every moment,
how many frames were decoded, sampled and encoded, and can stop cleanly: a decoding error
after some good frames, a plugin fault or Ctrl-C end the loop with a :class:`RunStatus`
instead of unwinding through the caller and losing the chunks done so far.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..api.errors import DecodeError, TokenCompressError
from ..files.outputs import RunStatus

__all__ = ["RunOutcome", "stream_video"]


def _writer(bar: Any) -> Callable[[str], None]:
    def write(line: str) -> None:
        bar.write(line, file=sys.stdout)  # clears the bar, prints, redraws it
        sys.stdout.flush()

    return write


@dataclass
class RunOutcome:
    chunks: list[Any] = field(default_factory=list)
    status: RunStatus = field(default_factory=RunStatus)
    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_encoded: int = 0
    discontinuities: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "frames_decoded": self.frames_decoded,
            "frames_sampled": self.frames_sampled,
            "frames_encoded": self.frames_encoded,
            "timestamp_discontinuities": self.discontinuities,
        }


def stream_video(
    stream: Any,
    video: Any,
    fps: float,
    max_frames: int | None,
    total: int | None,
    quiet: bool,
    debug: bool = False,
    on_chunk: Callable[..., None] | None = None,
) -> RunOutcome:
    """Decode ``video`` at ``fps`` into ``stream``; errors before the first decoded frame raise
    (the input is bad), later ones end the loop with a ``failed``/``interrupted`` status.

    ``on_chunk(stats, write)`` sees each chunk as it finishes (``write`` prints a line above the
    progress bar), so rows reach a log or a pipe while the stream runs, not at its end."""
    from tqdm import tqdm

    from ..media.video import iter_frames

    out = RunOutcome()
    reader = iter_frames(video, fps=fps, max_frames=max_frames)
    bar = tqdm(total=total, unit="chunk", desc="streaming", disable=quiet, file=sys.stderr, leave=False)

    def take(done: list[Any]) -> None:
        for stats in done:
            out.chunks.append(stats)
            out.frames_encoded += stats.frames
            if on_chunk is not None:
                on_chunk(stats, None if bar.disable else _writer(bar))
            bar.set_postfix(llm_tokens=stats.llm_tokens, vit_ms=f"{stats.vit_ms:.0f}")
            bar.update(1)

    inflight: list[int] = []  # the frame being encoded, if any: it is not part of the result

    def position() -> int:
        """Every video frame before this one was handled (encoded or skipped), none after."""
        return inflight[0] if inflight else reader.decoded

    try:
        try:
            for frame in reader:
                inflight[:] = [frame.index]
                take(stream.add_frames(frame.rgb[None]))
                inflight.clear()
        except DecodeError as exc:
            if exc.frames_decoded == 0:
                raise
            out.status = RunStatus("failed", str(exc), reader.decoded)
            take(stream.flush())  # the frames decoded before the error are good
        else:
            inflight[:] = [max(0, reader.decoded - 1)]
            take(stream.flush())
            inflight.clear()
    except KeyboardInterrupt:
        out.status = RunStatus("interrupted", "interrupted (Ctrl-C)", position())
    except Exception as exc:
        if reader.decoded == 0:
            raise  # the input itself is bad: one error line, exit 2
        if debug:
            traceback.print_exc()
        message = str(exc) if isinstance(exc, TokenCompressError) else f"{type(exc).__name__}: {exc}"
        out.status = RunStatus("failed", message, position())
    finally:
        bar.close()
        reader.close()
        out.frames_decoded, out.frames_sampled = reader.decoded, reader.sampled
        out.discontinuities = reader.discontinuities
    return out
