"""Docstrings, comments and docs cite files the project has (issue 9, item 6).

Every path written as ``<top-level folder>/.../<name>.<ext>`` in the project's code,
tests and documents must exist, so a move or a deletion that leaves a stale reference
fails here.  A path cited as another project's ("raiden's tests/fuzz/...") is not ours
and is skipped by that possessive; so are run-time paths under a data directory.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("ledger", "pbft_tasks", "mesh", "tests", "docs", "compose", "dashboards", ".ci")
SOURCES = [p for top in TOP for p in (ROOT / top).rglob("*")
           if p.suffix in (".py", ".md", ".yml", ".toml", ".json") and ".venv" not in p.parts] \
    + [ROOT / "README.md", ROOT / "pyproject.toml"]
CITED = re.compile(r"(?<![\w./-])((?:%s)/(?:[\w.-]+/)*[\w.-]+\.(?:py|md|toml|yml|json|sh))\b"
                   % "|".join(re.escape(t) for t in TOP))
OTHERS = re.compile(r"\w's\s*$")  # "raiden's tests/fuzz/x.py": another project's file
RUNTIME = ("compose/mesh/", "mesh/mesh.json")  # written by hdpbf init at run time


def cited() -> list[tuple[str, str]]:
    found = []
    for src in SOURCES:
        text = src.read_text(errors="replace")
        for m in CITED.finditer(text):
            if OTHERS.search(text[max(0, m.start() - 20):m.start()]):
                continue
            if m.group(1).startswith(RUNTIME):
                continue
            found.append((str(src.relative_to(ROOT)), m.group(1)))
    return found


def test_the_scan_finds_citations():
    paths = {path for _, path in cited()}
    assert {"pbft_tasks/metrics.py", "tests/meshkit.py"} <= paths


def test_every_cited_file_exists():
    missing = sorted({f"{src}: {path}" for src, path in cited() if not (ROOT / path).exists()})
    assert not missing, "stale references:\n" + "\n".join(missing)
