"""Docstrings, comments and docs cite files the project has, and the docs' links resolve.

Three rules, so a move, a rename or a deletion that leaves a stale reference fails here:
- Every path written as ``<top-level folder>/.../<name>.<ext>`` in the project's code,
  tests and documents must exist.
- Every bare file name (``node.py``, ``PROTOCOL.md``: a name with one of our source
  extensions, written without its folder) in the docs, comments and docstrings must be the
  name of some file in the repository.  A file outside the repository (notes kept beside
  it, say) is not something a reader can open.
- Every relative link and image in the Markdown documents resolves to a file, and a
  ``#fragment`` to a heading of that file (GitHub's anchor rules).

A path or name cited as another project's ("raiden's tests/fuzz/...") is not ours and is
skipped by that possessive; so are run-time paths under a data directory.  In Python
files only comments and docstrings are read for bare names: code builds file names of
its own, for temporary files.
"""
from __future__ import annotations

import ast
import functools
import io
import os
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("ledger", "pbft_tasks", "mesh", "tests", "docs", "compose", "dashboards", ".ci")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
SUFFIXES = (".py", ".md", ".yml", ".toml", ".json", ".sh", ".txt", ".conf", ".example")


def _sources() -> list[Path]:
    found = [p for top in TOP for p in (ROOT / top).rglob("*")
             if p.is_file() and p.suffix in SUFFIXES and ".venv" not in p.parts]
    return found + [ROOT / "README.md", ROOT / "pyproject.toml"]


SOURCES = _sources()
CITED = re.compile(r"(?<![\w./-])((?:%s)/(?:[\w.-]+/)*[\w.-]+\.(?:py|md|toml|yml|json|sh))\b"
                   % "|".join(re.escape(t) for t in TOP))
BARE = re.compile(r"(?<![\w./-])([A-Za-z_][\w.-]*\.(?:py|md|toml|yml|yaml|sh|txt))\b(?![/\w-])")
OTHERS = re.compile(r"\w's\s*$")  # "raiden's tests/fuzz/x.py": another project's file
RUNTIME = ("compose/mesh/", "mesh/mesh.json")  # written by hdpbf init at run time
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _others(text: str, start: int) -> bool:
    return bool(OTHERS.search(text[max(0, start - 20):start]))


@functools.lru_cache(maxsize=None)
def prose(path: Path) -> str:
    """What a reader reads in ``path``: all of a document; a Python file's comments and
    docstrings only."""
    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return text
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def cited() -> list[tuple[str, str]]:
    found = []
    for src in SOURCES:
        text = src.read_text(errors="replace")
        for m in CITED.finditer(text):
            if _others(text, m.start()) or m.group(1).startswith(RUNTIME):
                continue
            found.append((str(src.relative_to(ROOT)), m.group(1)))
    return found


def bare_names(sources: list[Path] = SOURCES, root: Path = ROOT) -> list[tuple[str, str]]:
    found = []
    for src in sources:
        text = prose(src)
        for m in BARE.finditer(text):
            if not _others(text, m.start()):
                found.append((str(src.relative_to(root)), m.group(1)))
    return found


def repository_file_names() -> set[str]:
    names: set[str] = set()
    for _, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        names.update(files)
    return names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    """A heading's anchor; the second heading with the same one gets ``-1``, and so on."""
    found: set[str] = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _without_code(path.read_text()), re.M):
        base, n = slug(m.group(1)), 0
        while (anchor := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(anchor)
    return found


def broken_links(documents: list[Path] = MARKDOWN, root: Path = ROOT) -> list[str]:
    broken = []
    for doc in documents:
        text = re.sub(r"`[^`\n]*`", "", _without_code(doc.read_text()))
        for m in LINK.finditer(text):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, fragment = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(root)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and (dest.suffix != ".md" or fragment not in anchors(dest)):
                broken.append(f"{where} (no such heading)")
    return broken


def test_the_scan_finds_citations():
    paths = {path for _, path in cited()}
    assert {"pbft_tasks/metrics.py", "tests/meshkit.py"} <= paths


def test_every_cited_file_exists():
    missing = sorted({f"{src}: {path}" for src, path in cited() if not (ROOT / path).exists()})
    assert not missing, "stale references:\n" + "\n".join(missing)


def test_the_scan_finds_bare_names_in_comments_and_docstrings_only(tmp_path):
    names = {name for _, name in bare_names()}
    assert {"PROTOCOL.md", "wiring.py"} <= names
    src = tmp_path / "m.py"
    src.write_text('"""Cites DESIGN.md."""\n# and node.py\nx = "child.py"\n'
                   "# raiden's test_state_changes.py\n")
    assert {name for _, name in bare_names([src], tmp_path)} == {"DESIGN.md", "node.py"}


def test_every_bare_file_name_is_a_file_of_the_repository():
    files = repository_file_names()
    missing = sorted({f"{src}: {name}" for src, name in bare_names() if name not in files})
    assert not missing, "names of files the repository does not have:\n" + "\n".join(missing)


def test_anchors_follow_githubs_rules():
    assert slug("Locally without Docker: hdpbf up / status / down") == \
        "locally-without-docker-hdpbf-up--status--down"
    assert slug("The hdpbf oslo.messaging driver") == "the-hdpbf-oslomessaging-driver"
    assert slug("Proven with nova's own code") == "proven-with-novas-own-code"
    assert slug("5.10 `pbft.certificate`") == "510-pbftcertificate"


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "a.md"
    doc.write_text("[ok](b.md#real-heading) [gone](c.md) [no](b.md#nowhere) [2](b.md#twice-1) "
                   "![img](img/x.png) `[code](d.md)` [web](https://example.org)\n")
    assert broken_links([doc], tmp_path) == ["a.md: c.md (no such file)",
                                   "a.md: b.md#nowhere (no such heading)",
                                   "a.md: img/x.png (no such file)"]


def test_every_link_in_the_docs_resolves():
    assert MARKDOWN and len(MARKDOWN) > 5
    broken = broken_links()
    assert not broken, "broken links:\n" + "\n".join(broken)
