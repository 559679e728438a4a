"""Followers on the real broker: they end at the validators' head, whatever
happens to them, and refuse what a Byzantine validator pushes.

Set up: 4 real validator workers on the local RabbitMQ (a private vhost), followers as
real ``hdpbf follow`` processes listed in mesh.json.
Step: 1,000 updates in three parts; between them one follower is ``kill -9``ed and
restarted, another is paused (SIGSTOP) while its queue is purged, then resumed.
Check: every follower's ledger has the validators' height and head, ``hdpbf verify
--follower`` passes on its file, and it refused nothing from honest validators.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from mesh.bench.consensus import drive
from mesh.ops.followers import Followers
from pbft_tasks.topology import add_followers

from tests.meshkit import wait_until

pytestmark = pytest.mark.broker


def _start_with_followers(make_mesh, names, **kw):
    mesh = make_mesh(4, start=False)
    add_followers(mesh.config_path, names)
    mesh.cfg = type(mesh.cfg).load(mesh.config_path)
    mesh.local.cfg = mesh.cfg
    mesh.start()
    fol = Followers(str(mesh.config_path), log_dir=mesh.local.log_dir)
    fol.purge(mesh.app)   # the session's vhost may hold queues of earlier tests' followers
    return mesh, fol


def _purge(mesh, queue: str) -> int:
    with mesh.app.connection_for_write() as conn:
        return conn.default_channel.queue_purge(queue) or 0


def _wait_followers_at(mesh, fol, names, tip, timeout=120.0):
    def at_tip():
        sts = {n: fol.status(n) for n in names}
        return all(s is not None and (s["height"], s["head"]) == tip for s in sts.values())
    wait_until(at_tip, timeout, lambda: f"followers {names} to reach {tip[0]} "
               f"{tip[1][:12]}; now {[(n, (fol.status(n) or {}).get('height')) for n in names]}",
               interval=0.2)


def _verify(mesh, name):
    res = subprocess.run([sys.executable, "-c", "import sys; from mesh.cli import main; sys.exit(main())",
                          "verify", "--config", str(mesh.config_path), "--follower", name, "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"hdpbf verify --follower {name}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return json.loads(res.stdout)


def test_followers_reach_the_head_after_kill_restart_and_a_purged_queue(make_mesh):
    names = ["fa", "fb", "fc"]
    mesh, fol = _start_with_followers(make_mesh, names)
    with fol:
        fol.start()
        fol.wait_started()
        client = mesh.client()
        drive(client, 300, window=300, chunk=100, key_prefix="a", every=True, timeout=180)

        fol.kill("fa")                                    # kill -9 mid-load
        fol.signal("fb", signal.SIGSTOP)                  # paused ...
        # small windows: many blocks, more than the paused follower has prefetched
        drive(client, 400, window=20, chunk=10, key_prefix="b", every=True, timeout=180)
        lost = _purge(mesh, "follower.fb")                # ... and its queue lost meanwhile
        assert lost > 0, "follower fb's queue held no pushes to lose"
        fol.restart("fa")
        fol.signal("fb", signal.SIGCONT)
        drive(client, 300, window=300, chunk=100, key_prefix="c", every=True, timeout=180)

        tip = mesh.wait_converged(at_least=1)
        _wait_followers_at(mesh, fol, names, tip)
        for name in names:
            st = fol.status(name)
            assert not st["rejected"], f"follower {name} refused honest blocks: {st['rejected']}"
        assert fol.status("fb")["fetches"] > 0
    for name in names:
        report = _verify(mesh, name)
        assert report["ok"] and report["nodes"][0]["blocks"] == tip[0]


def test_followers_refuse_a_byzantine_validators_altered_pushes(make_mesh):
    """Follower fx hears ONLY the Byzantine validator's pushes (``--sources 1``), so
    every push it gets is altered and refused, whatever the timing; it reaches the head
    by fetching.  Follower fy hears f+1 validators as usual."""
    from pbft_tasks.follower_push import sources_for
    names = ["fx", "fy"]
    mesh, fol = _start_with_followers(make_mesh, names)
    (bad,) = sources_for(4, 1, "fx", 1)
    mesh.local.stop()
    mesh.local.extra_env[bad] = {"HDPBF_BYZANTINE": "alter_push"}
    mesh.start()
    fol.extra["fx"] = ["--sources", "1"]
    with fol:
        fol.start()
        fol.wait_started()
        client = mesh.client()
        drive(client, 300, window=30, chunk=10, key_prefix="z", every=True, timeout=180)
        tip = mesh.wait_converged(at_least=1)
        _wait_followers_at(mesh, fol, names, tip)
        st = fol.status("fx")
        assert st["sources"] == [bad] and st["pushes"] > 0
        # every push is altered: refused, a conflict with the block already fetched for
        # its seq, or (a cut certificate: same header) a duplicate of it
        assert 0 < sum(st["rejected"].values()) <= st["pushes"], st
        assert set(st["rejected"]) <= {"commit_mismatch", "too_few_commits", "bad_prev",
                                       "bad_block", "conflicting_block"}, st["rejected"]
        assert st["fetches"] > 0
        assert not fol.status("fy")["rejected"] or bad in sources_for(4, 1, "fy")
    for name in names:
        assert _verify(mesh, name)["ok"]
