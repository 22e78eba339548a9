"""The three frame-sampling rules: stride, uniform k, time slots; and where they disagree."""

from __future__ import annotations

import pytest

from tokencompress.api.errors import TokenCompressError, VideoError
from tokencompress.eval.sampling import FrameRule, clip_indices, select
from tokencompress.eval.video_source import probe_times
from tokencompress.media.video import sample_video_path

NTSC = 30000 / 1001


def ntsc_times(n):
    return [i / NTSC for i in range(n)]


def test_stride_and_time_slots_drift_on_29_97_fps():
    times = ntsc_times(3100)
    stride = select(FrameRule("rekv_stride", 1.0), times, NTSC, 0, 1e9)
    slots = select(FrameRule("time_slots", 1.0), times, NTSC, 0, 1e9)
    assert stride[100] == 3000  # every round(29.97) = 30th frame
    assert slots[100] == 2998  # the first frame at or after t = 100 s (2997 lies 0.1 ms before it)
    assert stride[:10] == slots[:10]


def test_rules_agree_on_25_fps():
    times = [i / 25 for i in range(250)]
    a = select(FrameRule("rekv_stride", 1.0), times, 25.0, 0, 10)
    b = select(FrameRule("time_slots", 1.0), times, 25.0, 0, 10)
    assert a == b == list(range(0, 250, 25))


def test_on_the_real_carphone_clip():
    times, fps, duration = probe_times(str(sample_video_path("carphone_pristine.mp4")))
    assert len(times) == 120 and abs(fps - NTSC) < 1e-9 and duration == pytest.approx(4.004)
    assert select(FrameRule("rekv_stride", 1.0), times, fps, 0, 4) == [0, 30, 60, 90]
    assert select(FrameRule("rekv_stride", 0.5), times, fps, 0, 4) == [0, 60]


def test_window_sampling_restarts_at_the_window_start():
    times = [i / 25 for i in range(250)]
    assert clip_indices(times, 2, 3) == list(range(50, 75))
    # 2.52 s, 3.52 s, 4.52 s
    assert select(FrameRule("rekv_stride", 1.0), times, 25.0, 2.5, 5) == [63, 88, 113]
    assert select(FrameRule("uniform_k", 1.0, k=3), times, 25.0, 0, 4) == [0, 49, 99]


def test_bad_rules():
    with pytest.raises(VideoError, match="--fps 30 is above the source rate 25"):
        FrameRule("rekv_stride", 30.0).stride(25.0)
    with pytest.raises(TokenCompressError, match="unknown"):
        FrameRule("every_other")
    with pytest.raises(TokenCompressError, match="--fps must be > 0"):
        FrameRule("rekv_stride", 0.0)
