"""mesh.ops.respawn: the restart policy of hdpbf up's workers.  Only a
fail-hard exit (70) restarts; anything else passes through; the worker dies with it."""
import os
import signal
import subprocess
import sys

import pytest

from mesh.ops import respawn
from tests.meshkit import wait_until
from tests.processes import alive, kill_all


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(respawn, "FIRST_DELAY", 0.01)
    yield
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(body)
    return [sys.executable, str(path)]


def test_a_fail_hard_exit_is_restarted_until_a_clean_one(tmp_path):
    runs = tmp_path / "runs"
    cmd = _script(tmp_path, f"import sys\nwith open({str(runs)!r}, 'a') as f: f.write('x')\n"
                            f"sys.exit(70 if len(open({str(runs)!r}).read()) < 3 else 0)\n")
    assert respawn.run(cmd) == 0
    assert runs.read_text() == "xxx"  # two fail-hard exits, restarted; then a clean one


@pytest.mark.parametrize("code", [0, 1, 78])
def test_any_other_exit_passes_through_without_a_restart(tmp_path, code):
    runs = tmp_path / "runs"
    cmd = _script(tmp_path, f"import sys\nopen({str(runs)!r}, 'a').write('x')\nsys.exit({code})\n")
    assert respawn.run(cmd) == code and runs.read_text() == "x"


def test_the_worker_dies_with_its_respawner(tmp_path):
    pidfile = tmp_path / "pid"
    child = _script(tmp_path, f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                              "time.sleep(300)\n")
    wrapper = subprocess.Popen(respawn.respawn_command(child))
    try:
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 20,
                             "the worker to start"))
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait(timeout=10)
        try:
            wait_until(lambda: not alive(pid), 10, "the worker to die with its respawner")
        finally:
            kill_all([pid] if alive(pid) else [])
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


def test_sigterm_stops_the_worker_and_the_loop(tmp_path):
    child = _script(tmp_path, "import signal, sys, time\n"
                              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(70))\n"
                              "print('ready', flush=True)\ntime.sleep(300)\n")
    wrapper = subprocess.Popen(respawn.respawn_command(child), stdout=subprocess.PIPE, text=True)
    assert wrapper.stdout.readline().strip() == "ready"
    wrapper.send_signal(signal.SIGTERM)
    # the worker exits 70 on SIGTERM here, yet a stop is a stop: no restart
    assert wrapper.wait(timeout=20) == 70
