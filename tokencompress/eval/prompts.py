"""Benchmark prompts from a data file (``prompts.yaml``), replaceable key by key by a user file.

The wording is the project's own; a user who may use the official templates supplies them with
``--prompts FILE``. The file's hash goes into the results so numbers name their prompts.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..api.errors import TokenCompressError

__all__ = ["Prompts", "load_prompts"]

MAX_DEPTH = 64
"""Deeper YAML is refused before it is built (PyYAML recurses once per level)."""


class _Bounded(yaml.SafeLoader):
    """A safe loader that stops at :data:`MAX_DEPTH` levels of nesting."""

    _level = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._level += 1
        try:
            if self._level > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(
                    f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1}); "
                    f"a prompts file maps sections to key: template"
                )
            return super().compose_node(parent, index)
        finally:
            self._level -= 1


class Prompts:
    def __init__(self, table: dict[str, dict[str, str]], source: str) -> None:
        self.table = table
        self.source = source

    def get(self, section: str, key: str) -> str:
        try:
            return self.table[section][key]
        except KeyError:
            raise TokenCompressError(f"prompts ({self.source}): missing key {section}.{key}") from None

    def fill(self, section: str, key: str, **fields: Any) -> str:
        template = self.get(section, key)
        try:
            return template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise TokenCompressError(
                f"prompts ({self.source}): {section}.{key} has a bad placeholder ({exc}); "
                f"allowed: {', '.join(sorted(fields))}"
            ) from None

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.table, sort_keys=True).encode()).hexdigest()[:12]


def load_prompts(path: str | Path | None = None) -> Prompts:
    """The packaged prompts, with ``path``'s sections and keys laid over them."""
    text = resources.files("tokencompress.eval").joinpath("prompts.yaml").read_text(encoding="utf-8")
    table: dict[str, dict[str, str]] = yaml.safe_load(text)
    source = "built-in prompts.yaml"
    if path is not None:
        p = Path(path)
        try:
            user = yaml.load(p.read_text(encoding="utf-8"), Loader=_Bounded)  # noqa: S506 - a SafeLoader
        except OSError as exc:
            raise TokenCompressError(f"--prompts {p}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise TokenCompressError(f"--prompts {p}: not UTF-8 text (byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise TokenCompressError(f"--prompts {p}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(user, dict) or not all(isinstance(v, dict) for v in user.values()):
            raise TokenCompressError(
                f"--prompts {p}: must map benchmark sections ({', '.join(table)}) to key: template"
            )
        for section, keys in user.items():
            if section not in table:
                raise TokenCompressError(
                    f"--prompts {p}: unknown section '{section}'; known: {', '.join(table)}"
                )
            for key, value in keys.items():
                if key not in table[section]:
                    raise TokenCompressError(
                        f"--prompts {p}: unknown key {section}.{key}; known: {', '.join(table[section])}"
                    )
                if not isinstance(value, str):
                    raise TokenCompressError(f"--prompts {p}: {section}.{key} must be a string")
                table[section][key] = value
        source = str(p)
    return Prompts(table, source)
