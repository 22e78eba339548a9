"""Cut ``[a, b)`` windows of a video into new files with PyAV (no ffmpeg binary needed).

Frames are renumbered ``pts = 0, 1, 2, ...`` in the codec's time base ``1/rate`` on a stream
created at the source's average rate: writing ``pts=None`` instead yields a file that claims
2,500 fps and silently breaks every fps-based sampler. One decode of the source
feeds every window, since OVO's clips are all prefixes of one video.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av

from .video_source import probe_times

__all__ = ["cut_clips"]

_EPS = 1e-6


def cut_clips(
    src: str | Path,
    windows: Sequence[tuple[str | Path, float, float]],
    codec: str = "mpeg4",
    max_width: int | None = None,
) -> list[int]:
    """Write each ``(dst, a, b)``: the frames of ``src`` with ``a <= t < b``; returns frame counts.

    ``max_width`` scales the picture down (even sizes), for synthetic sets that need the timing
    of the real cut, not its pixels.
    """
    times, _, _ = probe_times(str(src))
    counts = [0] * len(windows)
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        rate = Fraction(vin.average_rate)
        w, h = vin.codec_context.width, vin.codec_context.height
        if max_width is not None and w > max_width:
            w, h = max_width, 2 * round(h * max_width / w / 2)
        outs = []
        for dst, _, _ in windows:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            out = av.open(str(dst), mode="w")
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            outs.append((out, stream))
        try:
            last = max(b for _, _, b in windows)
            for i, frame in enumerate(inp.decode(video=0)):
                t = times[i]
                if t >= last - _EPS:
                    break
                rgb = None
                for k, (_, a, b) in enumerate(windows):
                    if a - _EPS <= t < b - _EPS:
                        if rgb is None:
                            rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
                        new = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                        new.pts = counts[k]  # in the codec's time base, 1/rate
                        out, stream = outs[k]
                        for packet in stream.encode(new):
                            out.mux(packet)
                        counts[k] += 1
        finally:
            for out, stream in outs:
                for packet in stream.encode():
                    out.mux(packet)
                out.close()
    return counts
