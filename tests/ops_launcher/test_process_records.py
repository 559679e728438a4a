"""The launcher's process records without a broker: a recorded pid is signalled only
while it is still the process that was started; SIGTERM, then SIGKILL; the commands'
answers when nothing runs; Flower's credentials file."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import click
import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.ops.launcher import ProcessRecord, _proc_start_ticks, spawn_detached, stop_recorded
from mesh.ops.stack import flower_credentials
from tests.meshkit import wait_until
from tests.processes import group_members


def _spawn(tmp_path, name: str, command: list[str]) -> ProcessRecord:
    return spawn_detached(name, command, dict(os.environ), str(tmp_path / "logs" / f"{name}.log"),
                          kind="test")


def test_a_started_process_is_recorded_with_its_argv_start_time_and_log(tmp_path):
    rec = _spawn(tmp_path, "sleeper", ["sleep", "30"])
    try:
        assert rec.state() == "running" and rec.start_ticks
        assert os.getpgid(rec.pid) == rec.pid  # its own session and group
        again = ProcessRecord.from_json(json.loads(json.dumps(rec.to_json())))
        assert again == rec and again.state() == "running"
        assert "starting sleeper: sleep 30" in (tmp_path / "logs" / "sleeper.log").read_text()
    finally:
        assert stop_recorded([rec], timeout=5) == {"sleeper": "stopped"}
    assert rec.state() == "gone"
    assert stop_recorded([rec]) == {"sleeper": "not running"}


def test_a_pid_that_runs_something_else_is_left_alone(tmp_path):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        other_argv = ProcessRecord("ghost", bystander.pid, ["celery", "-A", "pbft_tasks"],
                                   None, 0.0)
        real = _spawn(tmp_path, "real", ["sleep", "30"])
        # Same argv, started at another time: a new process that got the recorded pid.
        other_start = ProcessRecord("late", bystander.pid, ["sleep", "30"],
                                    _proc_start_ticks(bystander.pid) + 1000, 0.0)
        assert other_argv.state() == "reused" and other_start.state() == "reused"
        outcome = stop_recorded([other_argv, other_start, real], timeout=5)
        assert outcome == {"ghost": "pid reused (left alone)", "late": "pid reused (left alone)",
                           "real": "stopped"}
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_process_ignoring_sigterm_is_killed_with_its_group(tmp_path):
    rec = _spawn(tmp_path, "stubborn", ["sh", "-c", "trap '' TERM; echo armed-$((6*7)); sleep 60 & wait"])
    log = tmp_path / "logs" / "stubborn.log"
    wait_until(lambda: "armed-42" in log.read_text(), 10, "the shell to ignore SIGTERM")
    assert stop_recorded([rec], timeout=0.5) == {"stubborn": "killed"}
    assert rec.state() == "gone"
    assert group_members(rec.pid) == []  # its sleep child went with it


def test_down_with_nothing_running_says_so_and_exits_0(tmp_path):
    res = CliRunner().invoke(main, ["down", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0 and "nothing to stop" in res.output


def test_status_with_nothing_running_exits_1(tmp_path):
    res = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["running"] is False and report["healthy"] is False


def test_flower_credentials_are_generated_once_into_a_0600_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HDPBF_FLOWER_USER", raising=False)
    monkeypatch.delenv("HDPBF_FLOWER_PASSWORD", raising=False)
    user, password, where = flower_credentials(str(tmp_path))
    assert where == str(tmp_path / "flower.auth") and user == "admin" and len(password) >= 24
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o600
    assert flower_credentials(str(tmp_path))[:2] == (user, password)  # kept across ups

    monkeypatch.setenv("HDPBF_FLOWER_USER", "ops")
    monkeypatch.setenv("HDPBF_FLOWER_PASSWORD", "s3cret")
    assert flower_credentials(str(tmp_path))[:2] == ("ops", "s3cret")
    monkeypatch.delenv("HDPBF_FLOWER_PASSWORD")
    with pytest.raises(click.ClickException, match="set both"):
        flower_credentials(str(tmp_path))


def test_status_with_the_broker_unreachable_says_so_and_exits_1(tmp_path):
    from mesh.ops.stack import _write_run
    from pbft_tasks.topology import init_mesh
    cfg = init_mesh(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:9//")
    _write_run(str(tmp_path), {"data_dir": str(tmp_path), "config": str(cfg.path),
                               "started_at": 0.0, "processes": []}, create=True)
    res = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    assert report["broker_error"] and "guest:***@" in report["broker"]
    assert [n["reason"] for n in report["nodes"]] == ["process not started; broker unreachable"] * 4
