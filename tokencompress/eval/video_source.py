"""One source video decoded for a group of queries: frame times once, pixels only where needed.

Every query of a group (one video) reads its frames from here, and so do the baseline and all
pipelines: they see the very same arrays. Pixels are decoded lazily for the union of the
indices asked for and kept until the group is done (``[H, W, 3]`` uint8 each).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..api.errors import VideoError
from ..media.video import _DECODE_ERRORS, _check_path, _open, _reason, _stream_fps, upright_rgb

__all__ = ["VideoSource", "probe_times"]


def probe_times(path: str) -> tuple[list[float], float, float]:
    """(presentation time of every frame, container average fps, duration in seconds).

    Times come from the packets' timestamps, sorted into presentation order (no decoding);
    a stream with untimed packets is decoded instead.
    """
    p = _check_path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        try:
            pts = [pk.pts for pk in container.demux(stream) if pk.size]
            if pts and None not in pts and stream.time_base is not None:
                times = sorted(float(t * stream.time_base) for t in pts)
            else:
                container.seek(0)
                times = [
                    float(f.time) if f.time is not None else i / fps
                    for i, f in enumerate(container.decode(video=0))
                ]
        except _DECODE_ERRORS as exc:
            raise VideoError(f"cannot decode video {p}: {_reason(exc)}") from exc
        if not times:
            raise VideoError(f"video has no frames: {p}")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = len(times) / fps if fps else times[-1]
        return times, fps, duration
    finally:
        container.close()


class VideoSource:
    def __init__(self, path: str) -> None:
        self.path = path
        self.times, self.avg_fps, self.duration = probe_times(path)
        self._pixels: dict[int, np.ndarray] = {}

    def frames(self, indices: Iterable[int]) -> list[np.ndarray]:
        want = list(indices)
        missing = sorted(set(want) - self._pixels.keys())
        if missing:
            self._decode(set(missing))
        return [self._pixels[i] for i in want]

    def _decode(self, wanted: set[int]) -> None:
        container = _open(_check_path(self.path))
        try:
            last = max(wanted)
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    self._pixels[i] = upright_rgb(frame, self.path)
                if i >= last:
                    break
        except _DECODE_ERRORS as exc:
            raise VideoError(f"cannot decode video {self.path}: {_reason(exc)}") from exc
        finally:
            container.close()
        lost = wanted - self._pixels.keys()
        if lost:
            raise VideoError(f"{self.path}: frames {sorted(lost)[:3]} vanished on a second decode")
