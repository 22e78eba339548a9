"""``tokencompress plugins`` as a table a person reads; ``--json`` keeps the machine form.

The listing is :meth:`Registry.describe`'s dict: ``strategies`` and ``targets`` rows (name,
package, version, stage, ...), ``plugins`` (every registered module), and where present the
``failed`` plugins and ``conflicts`` (one name registered by two packages).
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_plugins", "plugin_listing"]


def plugin_listing(registry: Any) -> dict[str, Any]:
    """``describe()`` plus, per registered plugin module, the hooks it implements."""
    listing = registry.describe()
    for row in listing["plugins"]:
        obj = registry.pm.get_plugin(row["name"])
        callers = registry.pm.get_hookcallers(obj) if obj is not None else None
        row["hooks"] = sorted(c.name.removeprefix("tokencompress_") for c in callers or [])
    return listing


def _grid(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)).rstrip()
    out = [line, "-" * len(line)]
    out += ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _text(value: Any) -> str:
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def format_plugins(listing: dict[str, Any]) -> str:
    lines = ["strategies:"]
    lines += _grid(
        ("name", "stage", "needs", "package", "version"),
        [
            (s["name"], _text(s.get("stage")), _text(s.get("needs")), s["package"], _text(s.get("version")))
            for s in listing.get("strategies", [])
        ],
    )
    lines += ["", "targets:"]
    lines += _grid(
        ("name", "package", "version"),
        [(t["name"], t["package"], _text(t.get("version"))) for t in listing.get("targets", [])],
    )
    lines += ["", "plugin modules:"]
    lines += _grid(
        ("module", "package", "version", "hooks"),
        [
            (_text(p.get("module")), _text(p.get("package")), _text(p.get("version")), _text(p.get("hooks")))
            for p in listing.get("plugins", [])
        ],
    )
    for key, title in (("failed", "failed to load"), ("conflicts", "conflicts"), ("blocked", "blocked")):
        items = listing.get(key)
        if items:
            lines += ["", f"{title}:"]
            lines += [f"  {_text(item) if not isinstance(item, dict) else _row(item)}" for item in items]
    return "\n".join(lines)


def _row(item: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {_text(v)}" for k, v in item.items())
