"""Decode-order sampling: timestamp resets and gaps never drop frames silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.pipelines import TINY_STC
from tests.support.videos import spliced_ts, write_segment
from tokencompress.cli.main import main
from tokencompress.media.video import iter_frames


@pytest.fixture(scope="module")
def spliced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spliced_ts(tmp_path_factory.mktemp("splice") / "spliced.ts")


def test_both_segments_of_a_spliced_stream_are_sampled(spliced: Path) -> None:
    every = iter_frames(spliced)
    frames = list(every)
    widths = [f.rgb.shape[1] for f in frames]
    assert every.decoded == every.sampled == len(frames) and every.discontinuities == 1
    assert widths.count(64) >= 29 and widths.count(80) == 30  # both resolutions, every frame
    times = [f.time_s for f in frames]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))  # the clock never goes back

    at2 = iter_frames(spliced, fps=2)
    sampled = list(at2)
    assert at2.decoded == every.decoded and at2.sampled == len(sampled)
    halves = [f.rgb.shape[1] for f in sampled]
    assert halves.count(64) == 6 and halves.count(80) == 6  # 3 s of each segment at 2 fps
    gaps = [b.time_s - a.time_s for a, b in zip(sampled, sampled[1:], strict=False)]
    assert gaps == pytest.approx([0.5] * (len(sampled) - 1), abs=1e-6)


def test_a_gap_in_timestamps_gives_no_burst(tmp_path: Path) -> None:
    """A forward jump (a camera that dropped out) costs one frame step, then 1/fps spacing resumes."""
    a, b = tmp_path / "a.ts", tmp_path / "b.ts"
    write_segment(a, 64, 48, 20)
    write_segment(b, 64, 48, 20, shade=100)
    # shift the second segment's timestamps 100 s ahead by muxing its packets with an offset
    import av

    joined = tmp_path / "gap.ts"
    with av.open(str(joined), "w", format="mpegts") as out:
        stream = None
        for src, offset in ((a, 0.0), (b, 100.0)):
            with av.open(str(src)) as inp:
                vin = inp.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(vin)
                for packet in inp.demux(vin):
                    if packet.dts is None:
                        continue
                    shift = int(offset / vin.time_base)
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = stream
                    out.mux(packet)
    reader = iter_frames(joined, fps=2)
    got = list(reader)
    assert reader.discontinuities == 1
    assert [f.rgb[0, 0, 0] > 90 for f in got].count(True) >= 3  # the second part is sampled
    gaps = [b.time_s - a.time_s for a, b in zip(got, got[1:], strict=False)]
    assert max(gaps) <= 0.5 + 1e-6 and min(gaps) >= 0.5 - 1e-6


def test_run_reports_decoded_and_sampled_and_both_halves_reach_the_model(
    spliced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path
) -> None:
    report, pipe = tmp_path / "run.json", tmp_path / "tiny.yaml"
    pipe.write_text(TINY_STC)
    argv = ["run", str(pipe), "--video", str(spliced), "--fps", "2", "--json", str(report)]
    code = main([*argv, "--model", str(tiny_checkpoint), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    saved = json.loads(report.read_text())
    summary = saved["summary"]
    assert saved["status"] == "complete" and saved["error"] is None
    assert (summary["frames_decoded"], summary["frames_sampled"], summary["frames"]) == (59, 12, 12)
    assert summary["timestamp_discontinuities"] == 1
    assert [c["first_frame"] for c in saved["chunks"]] == list(range(12))
    assert "frames: 59 decoded, 12 sampled at 2 fps, 12 encoded; 1 timestamp discontinuity bridged" in out
