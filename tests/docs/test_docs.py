"""The README is the front door: every hook a plugin can implement is documented there."""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

from tests.support.paths import PIPELINES, ROOT
from tokencompress.plugins import hookspecs

README = (ROOT / "README.md").read_text()
PLUGIN_README = (ROOT / "plugins" / "tokencompress-uniform" / "README.md").read_text()


def test_every_hookspec_is_documented() -> None:
    specs = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("tokencompress_")
    ]
    assert len(specs) == 4
    missing = [name for name in specs if name not in README]
    assert not missing, f"hooks missing from README.md: {missing}"
    for name in specs:
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"


def test_readme_names_every_ready_pipeline() -> None:
    files = sorted(p.name for p in PIPELINES.glob("*.yaml"))
    missing = [f for f in files if f not in README]
    assert not missing, f"pipelines missing from README.md: {missing}"


def test_plugin_readme_shows_the_entry_point_group() -> None:
    assert "[project.entry-points.tokencompress]" in PLUGIN_README


# ------------------------------------------------------------- the repository stands on its own
SECTION = "\u00a7"
# Citations of documents that do not ship with the project. Spelled in pieces so this file does
# not match itself.
OUTSIDE = re.compile(
    r"\bspecs?/"  # a specs folder
    r"|\bspecs? " + SECTION + r"|\bspec Q\d"  # a spec's section or quirk label
    r"|\bD[E]SIGN\b"  # the old design notes
    r"|/work/[s]hared"
)
DOC_SECTION = re.compile(r"([\w./-]+\.md) ((?:" + SECTION + r"\d+(?:\.\d+)*(?:, )?)+)")
# Files another change owns; each entry must still need its exemption (a stale one fails).
PENDING: set[str] = set()


def _tracked(*suffixes: str) -> list[Path]:
    """Tracked files with these suffixes outside ``tests/fixtures/`` (every file when not in git)."""
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        names = [n for n in out if (ROOT / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "dist", "__pycache__"}
        names = [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / n for n in sorted(names) if n.endswith(suffixes) and not n.startswith("tests/fixtures/")]


def _design_sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    return set(re.findall(r"^## (\d+)\.", text, flags=re.MULTILINE))


def test_no_file_cites_documents_outside_the_repository() -> None:
    files = _tracked(".py", ".md", ".yaml")
    assert any(p.name == "design.md" for p in files), "docs/design.md is not tracked"
    hits, pending_seen = [], set()
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                if rel in PENDING:
                    pending_seen.add(rel)
                else:
                    hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "citations of documents outside the repository:\n" + "\n".join(hits)
    stale = PENDING - pending_seen
    assert not stale, f"exemptions no longer needed, remove them from PENDING: {sorted(stale)}"


def test_section_citations_name_a_document_and_a_section_that_exist() -> None:
    sections = _design_sections()
    assert {"1", "2", "3", "4", "8", "9"} <= sections
    bad = []
    for path in _tracked(".py", ".md", ".yaml"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in PENDING:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if SECTION not in line:
                continue
            cited = DOC_SECTION.findall(line)
            if not cited:
                bad.append(f"{rel}:{n}: a section sign without a document: {line.strip()}")
            for doc, refs in cited:
                numbers = re.findall(SECTION + r"(\d+)", refs)
                if doc != "docs/design.md":
                    bad.append(f"{rel}:{n}: {doc} is not a document with numbered sections")
                elif not set(numbers) <= sections:
                    bad.append(f"{rel}:{n}: docs/design.md has no section {sorted(set(numbers) - sections)}")
    assert not bad, "\n".join(bad)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_in_readme_and_docs_point_to_files() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 4
    broken, seen = [], 0
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            seen += 1
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert seen >= 3
    assert not broken, "relative links to missing files:\n" + "\n".join(broken)
