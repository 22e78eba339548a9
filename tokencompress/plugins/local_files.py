"""Local plugin files: try a strategy or target from a ``.py`` file before packaging it.

``tokencompress run pipeline.yaml --plugin my_idea.py`` (or ``Registry(plugins=[load_plugin_file(p)])``)
imports the file as a module of its own and registers its hook implementations exactly as an
installed package's entry-point module would be, attributed to ``file:<name>.py``. The module
is never put in ``sys.modules``, so two files with one stem never collide.
"""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path
from types import ModuleType

from ..api.errors import PluginError

__all__ = ["load_plugin_file"]


def load_plugin_file(path: str | Path) -> ModuleType:
    """Import ``path`` as a plugin module; a clear :class:`PluginError` when it is not one."""
    p = Path(path)
    if p.is_dir():
        raise PluginError(f"--plugin {p}: is a directory; give a .py file (or pip install the package)")
    if p.exists() and not p.is_file():  # a device, a pipe, a socket
        raise PluginError(f"--plugin {p}: not a regular Python file; give a .py file")
    if not p.is_file():
        raise PluginError(f"--plugin {p}: file not found")
    if p.suffix != ".py":
        raise PluginError(f"--plugin {p}: expected a Python file ending in .py")
    spec = importlib.util.spec_from_file_location(f"tokencompress_plugin_file_{p.stem}", p)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always get a loader
        raise PluginError(f"--plugin {p}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit at import too: report, never exit the host
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = traceback.extract_tb(exc.__traceback__)[-1].lineno if exc.__traceback__ else "?"
        raise PluginError(
            f"--plugin {p}: import failed at line {line}: {type(exc).__name__}: {exc}"
        ) from None
    module.__tokencompress_package__ = f"file:{p.name}"  # type: ignore[attr-defined]
    return module
