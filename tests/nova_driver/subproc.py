"""Run a module of nova_cases/ in a pytest process of its own.

Why a subprocess: nova's functional fixtures monkey-patch the whole process with
eventlet, which must never happen beside Celery and the thread-based tests.
``--import-mode=importlib`` keeps the case's folder off ``sys.path`` in the child."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_case(name: str, timeout: float = 300, unittest: bool = False) -> str:
    """Run nova_cases/<name> with pytest, or (``unittest``) with Python's unittest: nova's
    own TestCase deletes its attributes on tear-down, which pytest's unittest support
    does not expect (nova runs its tests with stestr)."""
    case = Path(__file__).parent / "nova_cases" / name
    if unittest:
        module = "tests.nova_driver.nova_cases." + case.stem
        cmd = [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "unittest", "-v", module]
    else:
        cmd = [sys.executable, "-m", "pytest", "--import-mode=importlib", "-p",
               "no:cacheprovider", "-q", "-x", "-W", "ignore::DeprecationWarning", str(case)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} did not finish within {timeout}s:\n{exc.stdout or ''}",
                    pytrace=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{name} failed (exit {proc.returncode}); its own output:\n{out[-12000:]}",
                    pytrace=False)
    if unittest:
        assert "\nOK" in proc.stderr and "skipped" not in proc.stderr, out[-4000:]
    else:
        assert " passed" in proc.stdout and " skipped" not in proc.stdout, out[-4000:]
    return out
