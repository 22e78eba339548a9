"""Small test videos written with PyAV: a spliced broadcast, a file corrupt part-way, a rotated phone clip."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_segment(
    path: Path, w: int, h: int, n: int, fps: int = 10, shade: int = 0, codec: str = "mpeg2video"
) -> None:
    """``n`` flat frames whose grey level encodes the frame number (``shade + 4 i``)."""
    fmt = "mpegts" if path.suffix == ".ts" else None
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), (shade + 4 * i) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def spliced_ts(path: Path, n: int = 30) -> Path:
    """Two MPEG-TS segments back to back, as a splice or a camera reconnect produces: the second
    restarts its timestamps at zero and has another resolution (64x48, then 80x64)."""
    a, b = path.with_suffix(".a.ts"), path.with_suffix(".b.ts")
    write_segment(a, 64, 48, n, shade=0)
    write_segment(b, 80, 64, n, shade=128)
    path.write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink()
    b.unlink()
    return path


def corrupt_mp4(path: Path, n: int = 100) -> Path:
    """An mp4 whose middle fifth (40-60 % of the bytes) is overwritten with noise."""
    write_segment(path, 64, 48, n, codec="mpeg4")
    data = bytearray(path.read_bytes())
    lo, hi = int(len(data) * 0.4), int(len(data) * 0.6)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def corners(w: int = 64, h: int = 48) -> np.ndarray:
    """A ``[h, w, 3]`` picture with a red top-left, a green top-right and a blue bottom-left corner."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:16, :16] = (255, 0, 0)
    img[:16, -16:] = (0, 255, 0)
    img[-16:, :16] = (0, 0, 255)
    return img


def rotated_mp4(path: Path, degrees: float, hflip: bool = False, n: int = 3) -> Path:
    """``n`` frames of :func:`corners` stored landscape, with a display matrix (as phones write)
    that turns them ``degrees`` counter-clockwise (then mirrors them left-right with ``hflip``)."""
    img = corners()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


__all__ = ["write_segment", "spliced_ts", "corrupt_mp4", "corners", "rotated_mp4"]
