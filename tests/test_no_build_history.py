"""The product speaks of itself as it is today: no issue numbers, no build history.

Code, comments, docstrings, tests and documents say what the system does and why; how it
came to be (which tracker issue asked for a change, which work session found a bug, what
the code did before a fix) belongs in commit messages, where ``git log`` and ``git blame``
find it.  A reader of ``pbft_tasks/core/`` should not need the tracker to follow a
comment.  This test reads every text file of the repository and fails on the markers of
such history, naming the file and line (this file itself excepted: its examples are
the markers).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "data",
             ".grimp_cache", ".import_linter_cache"}  # lint-imports writes its caches there
BINARY = {".png", ".jpg", ".sqlite", ".sqlite-wal", ".sqlite-shm", ".pyc", ".gz", ".whl"}

MARKERS = re.compile("|".join([
    r"\bissues? #?\d+",                      # a tracker issue, or a range of them
    r"\bfindings? \d+",                      # an issue's numbered findings
    r"\bfound and fixed\b",
    r"(?-i:\bFound (?:by|reviewing|writing)\b)",  # how a bug was found, not the rule
    r"\bsession \d+\b",                      # a work session, not a pytest or client one
    r"\bother (?:helpers|sessions)'?\b",
    r"\bthis branch\b",
    r"\b(?:after|before) the (?:merge|fix|fixes)\b",
]), re.IGNORECASE)


def text_files() -> list[Path]:
    found = []
    for here, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(here) / f for f in files if Path(f).suffix not in BINARY]
    return [p for p in found if p != Path(__file__).resolve()]


def history(paths: list[Path], root: Path = ROOT) -> list[str]:
    hits = []
    for path in paths:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for no, line in enumerate(text.splitlines(), 1):
            m = MARKERS.search(line)
            if m:
                hits.append(f"{path.relative_to(root)}:{no}: {m.group(0)!r} in {line.strip()[:100]}")
    return hits


def test_the_scan_reads_code_docs_and_tests():
    names = {p.relative_to(ROOT).as_posix() for p in text_files()}
    assert "tests/test_no_build_history.py" not in names
    assert {"README.md", "docs/PROTOCOL.md", "pbft_tasks/core/replica.py",
            "tests/faults/kill_primary.toml", "compose/docker-compose.yml", ".ci/run"} <= names


def test_each_marker_is_caught_and_ordinary_words_are_not(tmp_path):
    n = 12
    bad = [f"# a follower (issue {n})", f'"""Every attack of issues {n - 3}-{n} at once."""',
           f"-- finding {n}: fetch amplification", "which was found and fixed there",
           '"""Found reviewing the view change."""', f"quiet runs of session {n // 4}",
           "machine shared with other helpers' tests", "main against this branch",
           "measured after the merge"]
    good = ["the pytest session's vhost", "a client session keeps two processes apart",
            "an issue with the broker", "the finding is counted", "found by its pid file",
            "before the first commit", "the fixed key"]
    src = tmp_path / "sample.py"
    src.write_text("\n".join(bad + good) + "\n")
    assert [h.split(":")[1] for h in history([src], tmp_path)] == \
        [str(i) for i in range(1, len(bad) + 1)]


def test_no_issue_numbers_or_build_history_in_the_repository():
    hits = history(text_files())
    assert not hits, ("build history belongs in commit messages; say what the code does "
                      "instead:\n" + "\n".join(hits))
