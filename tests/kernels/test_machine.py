"""The machine description every result records: the ISA torch dispatches on and what else
decides which kernels run (no timing here)."""

from __future__ import annotations

import os

import torch

from tokencompress.bench.reporting import machine_line
from tokencompress.kernels.machine import describe, isa

FIELDS = {
    "cpu_capability",
    "isa_env",
    "mkldnn",
    "mkl",
    "cpu",
    "logical_cores",
    "threads",
    "torch",
    "cuda_device",
}


def test_describe_names_the_isa_libraries_cores_and_threads():
    m = describe()
    assert set(m) == FIELDS
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability() == isa()
    assert m["mkldnn"] is torch.backends.mkldnn.is_available()
    assert m["mkl"] is torch.backends.mkl.is_available()
    assert m["logical_cores"] == os.cpu_count() and m["threads"] == torch.get_num_threads()
    assert m["torch"] == torch.__version__ and isinstance(m["cpu"], str) and m["cpu"]


def test_an_isa_limit_in_the_environment_is_recorded(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert describe()["isa_env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "ATEN_CPU_CAPABILITY" not in describe()["isa_env"]


def test_the_report_line_names_the_isa_and_an_emulation():
    m = describe() | {"cpu_capability": "AVX2", "isa_env": {"ATEN_CPU_CAPABILITY": "avx2"}, "threads": 3}
    line = machine_line(m)
    assert line.startswith("machine: torch CPU capability AVX2 (limited by ATEN_CPU_CAPABILITY=avx2)")
    assert "3 threads" in line and f"{m['logical_cores']} logical cores" in line
