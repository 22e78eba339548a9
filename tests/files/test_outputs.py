"""Output files (``run --json``, ``bench --out``, ``eval --out``, the tokenizer cache) cannot be
turned against the system: a link keeps pointing where it did, a device or a pipe is written
through and never replaced, new files follow the umask, and a full disk or an over-long name
is one line naming the file, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.paths import STC_YAML
from tokencompress.api.errors import TokenCompressError
from tokencompress.cli.main import main
from tokencompress.files import outputs
from tokencompress.files.outputs import check_output_file, write_json, write_text


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _disk_full(tmp: Path, data: bytes) -> None:
    tmp.write_bytes(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------ links
def test_a_link_is_kept_and_its_target_written(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text('{"old": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_json(link, {"new": 2})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"new": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temp file left


def test_a_relative_dangling_link_creates_its_target(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.json"
    link.symlink_to("sub/made.json")
    write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "sub" / "made.json").read_text() == "x"


def test_a_link_to_stdout_prints_and_stays_a_link(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "out.json"
    link.symlink_to("/dev/stdout")
    print("before", flush=True)
    write_json(link, {"a": 1})
    print("after")
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"
    assert capfd.readouterr().out == 'before\n{\n  "a": 1\n}\nafter\n'


@pytest.mark.slow
def test_run_json_to_stdout_prints_the_report(
    tmp_path: Path, tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pipe = tmp_path / "tiny.yaml"
    pipe.write_text("stages:\n  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 8}\n")
    link = tmp_path / "stdout.json"
    link.symlink_to("/dev/stdout")  # as /dev/stdout itself, never replaced even as root
    argv = ["run", str(pipe), "--model", str(tiny_checkpoint), "--max-frames", "1", "--no-progress"]
    assert main([*argv, "--json", str(link)]) == 0
    out = capfd.readouterr().out
    report = json.loads(out[out.index("\n{\n") + 1 : out.index("\n}\n") + 2])
    assert report["status"] == "complete" and report["summary"]["chunks"] == 1
    assert out.endswith(f"wrote {link}\n") and link.is_symlink()


def test_a_link_to_dev_fd_writes_that_descriptor(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)  # an empty pipe fails the test instead of hanging it
    try:
        link = tmp_path / "fd"
        link.symlink_to(f"/dev/fd/{w}")
        write_text(link, "through the pipe")
        assert os.read(r, 100) == b"through the pipe"
    finally:
        os.close(r)
        os.close(w)
    assert link.is_symlink()


def test_a_link_to_dev_null_leaves_the_device(tmp_path: Path) -> None:
    link = tmp_path / "null.json"
    link.symlink_to("/dev/null")
    assert check_output_file(link, "--json") == link
    write_json(link, {"a": 1})
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_text(fifo, "hello")
        assert os.read(reader, 100) == b"hello"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_directories_and_sockets_are_refused(tmp_path: Path) -> None:
    import socket

    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "to_folder").symlink_to(folder)
    for target in (folder, tmp_path / "to_folder"):
        with pytest.raises(TokenCompressError, match="is a directory"):
            write_text(target, "x")
        with pytest.raises(TokenCompressError, match="is a directory"):
            check_output_file(target, "--json")
    sock_path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(TokenCompressError, match=r"^--json .*s: is a socket, not a file"):
            check_output_file(sock_path, "--json")
    finally:
        sock.close()
    assert folder.is_dir() and (tmp_path / "to_folder").is_symlink()


def test_a_link_loop_is_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(TokenCompressError, match="too many levels of symbolic links"):
        check_output_file(loop, "--json")
    with pytest.raises(TokenCompressError, match="too many levels of symbolic links"):
        write_text(loop, "x")
    assert loop.is_symlink()


# ------------------------------------------------------------------ modes
def test_new_files_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    write_text(tmp_path / "new.txt", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o640


def test_a_replaced_file_keeps_its_mode_and_owner(tmp_path: Path, umask_027: None) -> None:
    old = tmp_path / "old.txt"
    old.write_text("old")
    os.chmod(old, 0o604)
    if os.geteuid() == 0:
        os.chown(old, 4321, 4321)
    write_text(old, "new")
    st = os.stat(old)
    assert old.read_text() == "new" and stat.S_IMODE(st.st_mode) == 0o604
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4321)


def test_the_tokenizer_cache_follows_the_umask(tmp_path: Path, umask_027: None) -> None:
    from tokencompress.models.tokenizer import _save_atomically, byte_tokenizer

    entry = tmp_path / "cache" / "entry"
    _save_atomically(byte_tokenizer(), entry, replace=False)
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o750
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o640 for p in entry.iterdir())


# ------------------------------------------------------------------ long names
def test_a_name_too_long_is_one_line(tmp_path: Path) -> None:
    long = tmp_path / ("a" * 300 + ".json")
    with pytest.raises(TokenCompressError, match=r"^--json .*: the name is too long for the file system"):
        check_output_file(long, "--json")
    with pytest.raises(TokenCompressError, match=r"^--json .*: the name is too long"):
        write_json(long, {}, "--json")


def test_the_temporary_name_fits_whatever_the_name(tmp_path: Path) -> None:
    name = "b" * 250 + ".json"  # 255 bytes: allowed, but not with a prefix and suffix around it
    write_json(tmp_path / name, {"ok": True})
    assert json.loads((tmp_path / name).read_text()) == {"ok": True}


def test_bench_names_a_long_pipeline_within_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokencompress import bench
    from tokencompress.bench.naming import result_stem

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated")

    monkeypatch.setattr(bench, "run_benchmark", fails)
    pipe = tmp_path / "long.yaml"
    pipe.write_text(f"name: {'n' * 300}\n")
    out = tmp_path / "out"
    code = main(["bench", str(pipe), "--out", str(out), "--max-frames", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    (saved,) = out.iterdir()
    assert saved.name == f"{result_stem('n' * 300)}.json" and len(saved.name) < 255
    assert json.loads(saved.read_text())["status"] == "failed"


# ------------------------------------------------------------------ full disk
def test_a_sweep_is_written_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokencompress import bench
    from tokencompress.bench import sweep

    fake = SimpleNamespace(spreads={}, ratios={"vit_gflops": 1.0, "prefill_gflops": 1.0}, load_average=None)
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: fake)
    monkeypatch.setattr(
        sweep, "sweep_payload", lambda *a: {"param": "p", "points": [], "model": "m", "frames": 1}
    )
    monkeypatch.setattr(outputs, "_write_synced", _disk_full)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stc_sweep.json").write_text('{"an": "older sweep"}')
    argv = ["bench", STC_YAML, "--out", str(out), "--max-frames", "1", "--no-progress"]
    code = main([*argv, "--sweep", "tokens_per_frame=30,60"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().startswith("error: --out ") and "stc_sweep.json: cannot write: No space left" in err
    assert json.loads((out / "stc_sweep.json").read_text()) == {"an": "older sweep"}
    assert sorted(p.name for p in out.iterdir()) == ["stc_sweep.json"]


def test_a_prediction_log_on_a_full_disk_is_one_line(tmp_path: Path) -> None:
    from tokencompress.eval.outputs import PredictionLog

    log = PredictionLog(tmp_path, 0)
    log.write([{"qid": "q0"}])

    class Full:
        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    real = log._fh
    log._fh = Full()  # type: ignore[assignment]
    with pytest.raises(TokenCompressError, match=r"preds.rank0.jsonl: cannot write: No space left on device"):
        log.write([{"qid": "q1"}])
    log.close()  # a failed flush on close is not a second error
    real.close()
    assert (tmp_path / "preds.rank0.jsonl").read_text() == '{"qid": "q0"}\n'


@pytest.mark.slow
def test_eval_results_on_a_full_disk_keep_the_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokencompress.eval.synthetic import build

    data = build("videomme", tmp_path / "data")["root"]
    out = tmp_path / "out"
    argv = ["eval", STC_YAML, "--benchmark", "videomme", "--data", str(data), "--fps", "0.25", "--limit", "1"]
    argv += ["--max-new-tokens", "2", "--out", str(out), "--no-progress"]
    real = os.fsync

    def full_at_md(fd: int) -> None:  # the disk fills while results.md's temporary file is flushed
        name = os.readlink(f"/proc/self/fd/{fd}").split("/")[-1]
        if name.startswith(".results.") and ".md" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", full_at_md)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "results.md: cannot write: No space left on device" in err
    assert "preds.rank*.jsonl" in err and "rerun the same command" in err
    assert not (out / "results.md").exists() and (out / "preds.rank0.jsonl").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert main(argv) == 0
    assert (out / "results.md").read_text().startswith("| method |")


if sys.platform != "linux":  # pragma: no cover - /dev/fd and FIFOs as on Linux
    pytestmark = pytest.mark.skip("Linux file semantics")
