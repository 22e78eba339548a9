"""A strategy in a local .py file registers like an installed plugin and runs from YAML."""

from __future__ import annotations

import pytest

from tests.support.plugin_fakes import STRIDE
from tokencompress import Pipeline, PluginError, Registry
from tokencompress.plugins.local_files import load_plugin_file


def test_a_plugin_file_registers_and_runs_from_yaml(tmp_path, tiny_llava_ov, frames):
    path = tmp_path / "stride.py"
    path.write_text(STRIDE)
    reg = Registry(plugins=[load_plugin_file(path)])
    assert reg.strategies["stride_from_file"].package == "file:stride.py"
    pipe = Pipeline.from_dict({"stages": {"pre_prefill": [{"strategy": "stride_from_file"}]}}, reg)
    with pipe.apply(tiny_llava_ov) as bound:
        stats = bound.stream().add_frames(frames[:2])
    assert [s.pre_prefill for s in stats] == [(16, 4), (16, 4)]


def test_two_files_with_one_stem_do_not_collide(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "p.py").write_text("X = 1\n")
    (b / "p.py").write_text("X = 2\n")
    assert (load_plugin_file(a / "p.py").X, load_plugin_file(b / "p.py").X) == (1, 2)


@pytest.mark.parametrize(
    ("content", "name", "needle"),
    [
        ("import sys\nsys.exit(3)\n", "exits.py", "import failed at line 2: SystemExit"),
        ("x = 1 / 0\n", "boom.py", "ZeroDivisionError"),
        (None, "missing.py", "file not found"),
        ("", "notpy.txt", "ending in .py"),
    ],
)
def test_a_bad_plugin_file_is_one_clear_error(tmp_path, content, name, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(PluginError, match=needle):
        load_plugin_file(path)


def test_a_directory_is_not_a_plugin_file(tmp_path):
    with pytest.raises(PluginError, match="is a directory"):
        load_plugin_file(tmp_path)
