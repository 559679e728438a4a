"""A worker that is not sure who it is refuses to start, quickly and saying why.

Set up: a mesh laid out by ``init_mesh``; its key directory broken one way per test.
Step: run the launcher's exact worker command (``mesh.ops.launcher.worker_command``) with the
environment ``node_env`` gives it.
Check: it exits non-zero (EX_CONFIG, 78) well before the timeout, and stderr says
"refusing to start" and what is wrong.  The timeout is a hang guard, not a measurement.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from mesh.ops.launcher import node_env, worker_command
from pbft_tasks.topology import init_mesh, node_key_path

pytestmark = pytest.mark.broker

HANG_GUARD_S = 90
EX_CONFIG = 78


@pytest.fixture
def mesh_dir(tmp_path, broker_url):
    init_mesh(tmp_path, nodes=4, broker_url=broker_url)
    return tmp_path


def _run_worker(mesh_dir, node_id: int, command: list[str] | None = None) -> tuple[int, str]:
    """Run one worker to its exit; (returncode, stderr).  Never leaves it running."""
    proc = subprocess.Popen(command or worker_command(node_id),
                            env=node_env(str(mesh_dir / "mesh.json"), node_id),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the worker did not refuse to start within {HANG_GUARD_S}s; stderr:\n"
                    f"{err.decode(errors='replace')[-3000:]}")
    return proc.returncode, err.decode(errors="replace")


def _assert_refused(code: int, out: str, *what: str) -> None:
    assert code == EX_CONFIG, f"exit code {code}, want {EX_CONFIG}; stderr:\n{out[-3000:]}"
    line = next((ln for ln in out.splitlines() if "refusing to start" in ln), None)
    assert line is not None, f"no 'refusing to start' on stderr:\n{out[-3000:]}"
    for w in what:
        assert w in line, f"{w!r} not in {line!r}"


def test_missing_key_file(mesh_dir):
    key = node_key_path(mesh_dir, 1)
    key.unlink()
    code, out = _run_worker(mesh_dir, 1)
    _assert_refused(code, out, str(key), "does not exist")


def test_key_of_another_node(mesh_dir):
    shutil.copy(node_key_path(mesh_dir, 2), node_key_path(mesh_dir, 1))
    os.chmod(node_key_path(mesh_dir, 1), 0o600)
    code, out = _run_worker(mesh_dir, 1)
    _assert_refused(code, out, "belongs to a different node than node 1", "node 2's key")


def test_key_readable_by_others(mesh_dir):
    os.chmod(node_key_path(mesh_dir, 1), 0o644)
    code, out = _run_worker(mesh_dir, 1)
    _assert_refused(code, out, "chmod 600")


def test_queue_of_another_node(mesh_dir):
    cmd = worker_command(1)
    cmd[cmd.index("-Q") + 1] = "node.2"
    code, out = _run_worker(mesh_dir, 1, cmd)
    _assert_refused(code, out, "node 1 must consume only its own queue node.1", "node.2")


def test_node_id_not_in_mesh(mesh_dir):
    code, out = _run_worker(mesh_dir, 7)
    _assert_refused(code, out, "node 7")
