"""What machine a timing holds for: the CPU's instruction set as torch dispatches on it, and more.

The same pipeline is faster or slower than stock depending on the vector ISA torch picked at
start-up (AVX-512 vs AVX2 changes which oneDNN and ATen kernels run), the thread count and
whether oneDNN/MKL are built in. Every result file (``tokencompress bench`` JSON and report,
eval's ``results.json``, ``benchmarks/``'s ``machine.json``) records :func:`describe` so a reader
knows which machine a figure is true on; the fast-path calibration keys its cache on :func:`isa`
and the thread count for the same reason. Lives in ``kernels`` so strategies, bench and eval may
all import it.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

__all__ = ["cpu_model", "describe", "isa"]


def isa() -> str:
    """torch's CPU capability (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``...): the kernels it dispatches
    to, which ``ATEN_CPU_CAPABILITY`` can lower below what the CPU supports."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old or odd builds
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` says."""
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    return name or platform.machine()


def describe() -> dict[str, Any]:
    """The machine a measurement ran on: ISA, oneDNN/MKL, CPU model, cores, threads, torch.

    Keys: ``cpu_capability`` (:func:`isa`), ``isa_env`` (the ISA-limiting environment variables
    that were set, e.g. an emulated AVX2 run), ``mkldnn``/``mkl`` (built in and usable),
    ``cpu``, ``logical_cores``, ``threads`` (torch intra-op threads used), ``torch``, and
    ``cuda_device`` (the GPU's name, or None).
    """
    env = {
        k: os.environ[k]
        for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
        if os.environ.get(k)
    }
    return {
        "cpu_capability": isa(),
        "isa_env": env,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "mkl": bool(torch.backends.mkl.is_available()),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
