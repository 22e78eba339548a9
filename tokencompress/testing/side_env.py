"""Side environments: a venv beside the running one, for packages the test environment must not hold.

Some checks need packages whose own requirements clash with this project's (lmms-eval pins
torchvision to one torch, vLLM brings its own torch). They run in a *side environment*: a venv
layered over the environment of the running interpreter, whatever that is (a venv, the system
Python, a conda env), that adds only the extra packages and never resolves its own torch.

* The venv is made with ``--without-pip`` and without ``--system-site-packages`` (which would
  show the *base* interpreter's packages, not a venv's). A ``.pth`` file adds every site
  directory the running interpreter sees, with ``site.addsitedir`` so that their own ``.pth``
  files (editable installs) work too. The venv's own site directory comes first: a package it
  installs shadows the outer one, and nothing outside the venv is ever changed. pip is the
  outer environment's, run by the venv's interpreter.
* Every install is constrained to the outer environment's exact torch, torchvision,
  torchaudio, triton and transformers (:attr:`SideEnv.constraints`, those that are installed),
  and is planned first with ``pip install --dry-run --report``: a plan that needs another torch,
  or would install torch, triton, CUDA libraries (``nvidia-*``, ``cuda-*``) or any pinned package
  is refused with :class:`SideEnvError` before anything is installed. Planning fetches only
  what pip needs to read requirements (the planned light wheels where the index serves no
  separate metadata); with torch pinned, pip never looks at another torch's wheels, and no
  heavy download starts. After a build,
  :meth:`SideEnv.verify` checks that ``torch.__version__`` and ``transformers.__version__`` inside
  are the outer ones.
* A recipe may let the side environment hold **its own** release of a pinned package other than
  torch (``SideEnv(own={"transformers": ">=5.16.1,<5.20"})``: vLLM pins an older transformers
  than the running one). That package is then constrained to the given range instead of the
  outer version, may appear in a plan, and :meth:`SideEnv.verify` checks that the version inside
  is in the range. torch, torchvision, torchaudio and triton can never be the recipe's own.
* :func:`default_location` keys the cache folder by the recipe and the outer environment's
  identity (its interpreter, ``sys.prefix``, Python, torch and transformers versions), so a venv
  and the system Python never share a side environment.

Use :func:`ensure` with a build function; it builds under a file lock, once, and reuses a
complete build::

    side = ensure(default_location("my-tool", recipe), recipe, lambda s: s.install("my-tool==1.2"))
    subprocess.run([str(side.python), "-m", "my_tool", ...])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..api.errors import TokenCompressError

__all__ = [
    "SideEnv",
    "SideEnvError",
    "default_location",
    "is_built",
    "ensure",
    "outer_identity",
    "outer_pins",
    "outer_site_dirs",
]

PINNED = ("torch", "torchvision", "torchaudio", "triton", "transformers")
NEVER_OWN = ("torch", "torchvision", "torchaudio", "triton")
"""Pinned packages a side environment may never hold a release of its own of (a torch is GBs)."""
HEAVY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
MARKER = "tokencompress-side-env.json"
_CONFLICT = ("ResolutionImpossible", "conflicting dependencies")


class SideEnvError(TokenCompressError):
    """A side environment cannot be built without a torch of its own (or another heavy download)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def outer_pins() -> dict[str, str]:
    """The running environment's versions of :data:`PINNED` (those installed)."""
    versions = {name: _installed_version(name) for name in PINNED}
    return {name: v for name, v in versions.items() if v is not None}


def outer_identity() -> dict[str, object]:
    """What a side environment depends on: the running interpreter, its prefix and its pins."""
    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "python": sys.version,
        "pins": outer_pins(),
    }


def outer_site_dirs() -> list[str]:
    """The site directories the running interpreter sees, in ``sys.path`` order."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    candidates = {*site.getsitepackages(), *(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))}
    candidates |= {sysconfig.get_paths(vars=base)[k] for k in ("purelib", "platlib")}
    if site.ENABLE_USER_SITE:
        candidates.add(site.getusersitepackages())
    on_path = [p for p in sys.path if p in candidates]
    own = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]  # even under ``python -S``
    return list(dict.fromkeys([*on_path, *own]))


def default_location(name: str, recipe: object) -> Path:
    """``$XDG_CACHE_HOME/tokencompress/NAME-venv-KEY`` (``~/.cache`` by default); the key hashes
    ``recipe`` (anything JSON can write) and :func:`outer_identity`."""
    key = json.dumps({"name": name, "recipe": recipe, "outer": outer_identity()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tokencompress" / f"{name}-venv-{digest}"


def _clean_env() -> dict[str, str]:
    drop = ("VIRTUAL_ENV", "PYTHONHOME", "PIP_TARGET", "PIP_PREFIX", "PIP_USER", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _pins_text() -> str:
    return ", ".join(f"{n} {v}" for n, v in outer_pins().items()) or "no torch"


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """pip's last ``ERROR:`` line (else the last line it wrote)."""
    lines = [
        ln.strip()
        for ln in (proc.stdout + "\n" + proc.stderr).splitlines()
        if ln.strip() and not ln.startswith("WARNING: Location")
    ]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or [f"exit code {proc.returncode}"])[-1]


def _conflict(proc: subprocess.CompletedProcess[str]) -> str:
    """pip's "The conflict is caused by:" lines, joined on one line."""
    lines = (proc.stderr + proc.stdout).splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("The conflict is caused by"):
            causes = []
            for cause in lines[i + 1 :]:
                if not cause.strip():
                    break
                causes.append(cause.strip())
            return "; ".join(causes)
    return _last_line(proc)


@dataclass(frozen=True)
class SideEnv:
    """A side environment at ``path``; ``name`` appears in its error messages."""

    path: Path
    name: str = "side environment"
    env: Mapping[str, str] | None = None  # for pip and verify; default: os.environ without VIRTUAL_ENV
    own: Mapping[str, str] | None = None
    """Pinned packages (never torch) this environment holds a release of its own of: name → pip
    version range (``">=5.16.1,<5.20"``), constrained to that range instead of the outer version."""

    def __post_init__(self) -> None:
        never = [n for n in (self.own or {}) if _canonical(n) in {_canonical(m) for m in NEVER_OWN}]
        if never:
            raise SideEnvError(
                f"{self.name}: {', '.join(never)} cannot be a side environment's own release; it always "
                f"uses this environment's {_pins_text()}"
            )

    def _owned(self) -> dict[str, str]:
        return {_canonical(n): spec for n, spec in (self.own or {}).items()}

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def constraints(self) -> Path:
        return self.path / "outer-constraints.txt"

    def _env(self) -> dict[str, str]:
        return dict(self.env) if self.env is not None else _clean_env()

    def create(self) -> None:
        """A fresh venv over the running environment (its site directories and exact pins)."""
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(self.path)], check=True)
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        inner = subprocess.run(
            [str(self.python), "-c", code], capture_output=True, text=True, check=True, env=self._env()
        )
        lines = [f"import site; site.addsitedir({d!r})\n" for d in outer_site_dirs()]
        (Path(inner.stdout.strip()) / "outer-environment.pth").write_text("".join(lines))
        owned = self._owned()
        lines = [f"{n}=={v}\n" for n, v in outer_pins().items() if _canonical(n) not in owned]
        lines += [f"{n}{spec}\n" for n, spec in owned.items()]
        self.constraints.write_text("".join(lines))

    def pip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m pip ARGS`` in the venv (with the outer environment's pip)."""
        cmd = [str(self.python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=self._env())

    def plan(self, *requirements: str, options: Sequence[str] = ()) -> list[tuple[str, str]]:
        """(name, version) of what ``pip install OPTIONS REQUIREMENTS`` would install here, planned
        under the outer pins; refuses a plan that needs another torch or installs a heavy package."""
        report = self.path / "pip-plan.json"
        cmd = ["install", "--dry-run", "--report", str(report), "-c", str(self.constraints)]
        proc = self.pip(*cmd, *options, *requirements)
        what = " ".join(requirements)
        if proc.returncode != 0:
            if any(word in proc.stderr + proc.stdout for word in _CONFLICT):
                raise SideEnvError(
                    f"{self.name}: {what} cannot be installed next to this environment's {_pins_text()}: "
                    f"{_conflict(proc)}; nothing was installed"
                )
            raise SideEnvError(f"{self.name}: pip install --dry-run {what} failed: {_last_line(proc)}")
        items = json.loads(report.read_text()).get("install", [])
        planned = [(item["metadata"]["name"], item["metadata"]["version"]) for item in items]
        check_plan(self.name, what, planned, own=self._owned())
        return planned

    def install(self, *requirements: str, options: Sequence[str] = (), no_deps: bool = False) -> None:
        """``pip install`` with the outer pins as constraints, once :meth:`plan` allowed it."""
        options = [*options, *(["--no-deps"] if no_deps else [])]
        self.plan(*requirements, options=options)
        proc = self.pip("install", "-c", str(self.constraints), *options, *requirements)
        if proc.returncode != 0:
            raise SideEnvError(
                f"{self.name}: pip install {' '.join(requirements)} failed: {_last_line(proc)}"
            )

    def verify(self) -> None:
        """The venv has the outer pins (distribution versions), and its ``torch.__version__`` and
        ``transformers.__version__`` are the outer ones."""
        owned = self._owned()
        want = {n: v for n, v in outer_pins().items() if _canonical(n) not in owned}
        found = self._run_json(
            "import json, sys; from importlib import metadata\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = metadata.version(n)\n"
            "    except metadata.PackageNotFoundError: pass\n"
            "print(json.dumps(out))",
            *want,
        )
        self._compare(want, found)
        imported = [n for n in ("torch", "transformers") if n in want]
        code = "import importlib, json, sys; print(json.dumps({n: importlib.import_module(n).__version__ for n in sys.argv[1:]}))"
        self._compare({n: want[n] for n in imported}, self._run_json(code, *imported))
        if owned:
            self._check_owned(owned, self._run_json(code, *owned))

    def _check_owned(self, owned: Mapping[str, str], found: Mapping[str, str]) -> None:
        from packaging.specifiers import SpecifierSet

        wrong = [
            f"{n} {found.get(n)} outside {spec}"
            for n, spec in owned.items()
            if not SpecifierSet(spec).contains(found.get(n, ""), prereleases=True)
        ]
        if wrong:
            raise SideEnvError(
                f"{self.name}: at {self.path} it sees {', '.join(wrong)}; delete that folder to rebuild it"
            )

    def _run_json(self, code: str, *args: str) -> dict[str, str]:
        proc = subprocess.run(
            [str(self.python), "-c", code, *args], capture_output=True, text=True, env=self._env()
        )
        if proc.returncode != 0:
            raise SideEnvError(f"{self.name}: its python cannot import {', '.join(args)}: {_last_line(proc)}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def _compare(self, want: Mapping[str, str], found: Mapping[str, str]) -> None:
        wrong = [f"{n} {found.get(n, '(none)')} instead of {v}" for n, v in want.items() if found.get(n) != v]
        if wrong:
            raise SideEnvError(
                f"{self.name}: at {self.path} it sees {', '.join(wrong)}; delete that folder to rebuild it"
            )


def check_plan(
    name: str, what: str, planned: Sequence[tuple[str, str]], own: Mapping[str, str] | None = None
) -> None:
    """Refuse a pip plan that installs torch, triton, CUDA libraries or a pinned package (other
    than the recipe's ``own`` ones, which are never torch)."""
    pinned = {_canonical(n) for n in PINNED} - {_canonical(n) for n in own or {}}
    heavy = [f"{n} {v}" for n, v in planned if HEAVY.match(_canonical(n)) or _canonical(n) in pinned]
    if heavy:
        raise SideEnvError(
            f"{name}: installing {what} would download {', '.join(heavy)}; a side environment uses "
            f"this environment's {_pins_text()} and downloads no torch or CUDA libraries; nothing was installed"
        )


def is_built(path: Path, recipe: object) -> bool:
    """Whether a complete build of ``recipe`` for this outer environment is at ``path`` (then
    :func:`ensure` returns it without downloading anything)."""
    marker = path / MARKER
    wanted = json.dumps({"recipe": recipe, "outer": outer_identity()}, sort_keys=True)
    python = SideEnv(path, "side environment", None).python
    return python.exists() and marker.exists() and marker.read_text() == wanted


def ensure(
    path: Path,
    recipe: object,
    build: Callable[[SideEnv], None],
    *,
    name: str = "side environment",
    env: Mapping[str, str] | None = None,
    own: Mapping[str, str] | None = None,
) -> SideEnv:
    """The side environment at ``path``, built by ``build`` unless a complete build for ``recipe``
    and this outer environment is there (the build runs under a file lock: a second process waits)."""
    import fcntl  # POSIX only; imported here so the module imports anywhere

    side = SideEnv(path, name, env, own)
    wanted = json.dumps({"recipe": recipe, "outer": outer_identity()}, sort_keys=True)
    marker = path / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if side.python.exists() and marker.exists() and marker.read_text() == wanted:
            return side
        side.create()
        build(side)
        side.verify()
        marker.write_text(wanted)
    return side
