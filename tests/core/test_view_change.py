"""Paper tests for view change (Castro and Liskov 1999, sec. 4.4 and 4.5.2): set up, step,
check, on the deterministic in-memory cluster."""
from __future__ import annotations

import pytest

from pbft_tasks.core.actions import Evidence
from pbft_tasks.core.collector import VOTE_ROUTINGS
from pbft_tasks.core.messages import (Commit, NewView, PrePrepare, Prepare, ViewChange,
                                      batch_digest)
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.viewchange import check_view_change, new_view_preprepares

from .helpers import run_dropping

VC_TICKS = 20
MODE = {"votes": "all-to-all"}


@pytest.fixture(autouse=True, params=VOTE_ROUTINGS)
def _votes(request, monkeypatch):
    """Every view-change test runs with both vote routings (core/collector.py)."""
    monkeypatch.setitem(MODE, "votes", request.param)


def cluster(**kw) -> Cluster:
    cfg = dict(checkpoint_interval=4, log_window=8, max_batch=1, batch_timeout_ticks=0,
               retransmit_ticks=10_000, view_change_ticks=VC_TICKS, votes=MODE["votes"])
    cfg.update(kw)
    return Cluster(4, **cfg)


def views(c: Cluster) -> list:
    return [n.replica.view if n.replica else None for n in c.nodes]


def run_until_quiet(c: Cluster, ticks: int) -> None:
    for _ in range(ticks):
        c.tick()
        c.stabilize()


def primary_down_next_request_at_backups() -> Cluster:
    """One request executed in view 0; the primary (0) crashes; the client sends its next
    request to every backup, as it does when its primary is silent (sec. 4.1)."""
    c = cluster()
    c.request("a", 1, "k1", 1)
    c.stabilize()
    c.crash(0)
    for to in (1, 2, 3):
        c.request("a", 2, "k2", 2, to=to)
    c.stabilize()
    return c


def test_silent_primary_is_replaced_and_the_request_executes_in_the_new_view():
    """sec. 4.4: backups whose request timer expires move to v+1; the new primary
    (1 = 1 mod 4) sends NEW-VIEW with 2f+1 VIEW-CHANGEs and the request commits."""
    # set up: one request executed in view 0, then the primary goes silent
    # step: the client sends its next request to every backup
    c = primary_down_next_request_at_backups()
    run_until_quiet(c, VC_TICKS + 5)
    # check: view 1 installed on the live replicas, the request executed there
    assert views(c)[1:] == [1, 1, 1]
    assert [c.height(i) for i in (1, 2, 3)] == [2, 2, 2]
    assert len({c.head(i) for i in (1, 2, 3)}) == 1


def test_a_request_prepared_in_the_old_view_keeps_its_seq_and_digest():
    """sec. 4.4: a prepared certificate in 2f+1 VIEW-CHANGEs makes the new primary
    re-propose the same batch at the same seq, so what may have committed somewhere
    commits everywhere with the same digest."""
    # set up: seq 1 prepared at the backups, but every commit is lost
    c = cluster()
    c.request("a", 1, "k1", 1)
    while any(c.nodes[e.to].up for e in c.network):
        if isinstance(c.network[0].msg, Commit):
            c.drop(0)
        else:
            c.deliver(0)
    pp = c.nodes[1].replica.window.log[1].preprepare
    c.crash(0)
    # step: the request timers expire
    run_until_quiet(c, VC_TICKS + 5)
    # check: seq 1 executed in view 1 with the original digest
    for i in (1, 2, 3):
        assert c.nodes[i].replica.view == 1
        block = c.nodes[i].blocks[0]
        assert block["seq"] == 1 and block["digest"] == pp.digest and block["view"] == 1


def test_null_requests_fill_gaps_in_the_new_view():
    """sec. 4.4: a seq between min-s and max-s with no prepared certificate in V gets a
    null request, so execution in order never waits on a hole."""
    # set up: VIEW-CHANGEs in which seq 1 and 3 are prepared and seq 2 is not
    def prepared(seq, value):
        from pbft_tasks.core.messages import Request
        batch = (Request("a", seq, {"op": "put", "key": f"k{seq}", "value": value, "expires_at": None}),)
        pp = PrePrepare(0, seq, batch_digest(batch), batch, 0)
        return pp, tuple(Prepare(0, seq, pp.digest, s) for s in (1, 2))
    vcs = [ViewChange(1, 0, (), (prepared(1, "x"), prepared(3, "y")), s) for s in (1, 2, 3)]
    # step
    min_s, pps = new_view_preprepares(1, vcs, 4)
    # check
    assert min_s == 0 and [p.seq for p in pps] == [1, 2, 3]
    assert pps[1].batch == () and pps[1].digest == batch_digest(())
    assert all(p.view == 1 and p.sender == 1 for p in pps)


def run_dropping_new_views(c: Cluster, ticks: int, sender: int) -> None:
    """A new primary that joins the view change but whose NEW-VIEW never arrives."""
    run_dropping(c, ticks, lambda e: isinstance(e.msg, NewView) and e.msg.sender == sender)


def test_view_change_timer_doubles_when_the_next_primary_is_silent_too():
    """sec. 4.5.2: once 2f+1 replicas asked for v+1, a replica that gets no NEW-VIEW in
    time moves to v+2 and waits twice as long, so a run of faulty primaries cannot make
    the mesh loop."""
    # set up: primary 0 crashed; the next primary (1) takes part in the view change,
    # but its NEW-VIEW never arrives
    c = primary_down_next_request_at_backups()
    r2 = c.nodes[2].replica
    # step: first timeout -> view 1 (with 2f+1 VIEW-CHANGEs); no NEW-VIEW for 2 x VC_TICKS -> view 2
    run_dropping_new_views(c, VC_TICKS + 2, sender=1)
    first = r2.view
    assert len(r2.vc.view_changes.get(1, {})) >= 3
    started = r2.vc.started_at
    run_dropping_new_views(c, 2 * VC_TICKS + 2, sender=1)
    # check: view 2, after twice the first timeout; its primary (2) then completes it
    assert first == 1 and r2.view == 2
    assert r2.vc.started_at - started >= 2 * VC_TICKS
    run_until_quiet(c, 4 * VC_TICKS)
    assert views(c)[1:] == [2, 2, 2] and [c.height(i) for i in (1, 2, 3)] == [2, 2, 2]


def test_a_replica_that_times_out_alone_does_not_climb_views():
    """sec. 4.5.2: the timer for v+2 starts only with 2f+1 VIEW-CHANGEs for v+1, so one
    replica whose request timer expired on its own stays at v+1 (it cannot go back:
    its VIEW-CHANGE is out) instead of moving further away from the mesh at every
    timeout; the others go on committing in view 0."""
    # set up: node 3 alone knows of a request the primary never got
    c = cluster()
    c.request("a", 1, "k1", 1)
    c.stabilize()
    c.request("b", 1, "lost", 1, to=3)
    c.deliver(len(c.network) - 1)  # node 3 takes it and forwards it to the primary ...
    c.network = [e for e in c.network if not (e.to == 0 and e.origin == 3)]  # ... in vain
    # step: node 3 times out; its VIEW-CHANGE finds no company (f+1 are needed to join)
    run_dropping(c, 6 * VC_TICKS,
                 lambda e: e.to == 0 and e.origin == 3 and not isinstance(e.msg, ViewChange))
    # check: node 3 waits in view 1, the others are in view 0 and still commit
    assert views(c) == [0, 0, 0, 1] and c.nodes[3].replica.vc.in_view_change
    c.request("a", 2, "k2", 2)
    run_until_quiet(c, 2)
    assert [c.height(i) for i in (0, 1, 2)] == [2, 2, 2]


def test_view_change_with_a_forged_prepared_certificate_is_evidence():
    """sec. 4.4: a prepared certificate needs 2f matching prepares from backups."""
    # set up: a VIEW-CHANGE claiming seq 1 prepared with a single prepare
    from pbft_tasks.core.replica import Replica, ReplicaConfig
    batch = ()
    pp = PrePrepare(0, 1, batch_digest(batch), batch, 0)
    vc = ViewChange(1, 0, (), ((pp, (Prepare(0, 1, pp.digest, 3),)),), 3)
    r = Replica(1, ReplicaConfig(n=4, checkpoint_interval=4, log_window=8))
    # step
    out = r.handle(vc)
    # check
    assert check_view_change(vc, 4, 8) is not None
    assert [a.reason for a in out if isinstance(a, Evidence)] == ["bad_view_change"]
    assert 3 not in r.vc.view_changes.get(1, {})


def test_new_view_whose_preprepares_differ_from_its_view_changes_is_evidence():
    """sec. 4.4: backups recompute O from V and refuse a NEW-VIEW that re-proposes
    anything else (a Byzantine new primary cannot smuggle in a batch)."""
    # set up: three honest VIEW-CHANGEs with nothing prepared, and an O with a request
    from pbft_tasks.core.messages import Request
    from pbft_tasks.core.replica import Replica, ReplicaConfig
    vcs = tuple(ViewChange(1, 0, (), (), s) for s in (0, 2, 3))
    forged = (Request("evil", 1, {"op": "delete", "key": "k"}),)
    nv = NewView(1, vcs, (PrePrepare(1, 1, batch_digest(forged), forged, 1),), 1)
    # replica 2 waits for the NEW-VIEW of view 1 (as restarted from its meta record)
    meta = Replica(2, ReplicaConfig(n=4)).meta_record() | {"view": 1, "in_view_change": True}
    r = Replica(2, ReplicaConfig(n=4, checkpoint_interval=4, log_window=8), records={"meta": meta})
    # step
    out = r.handle(nv)
    # check
    assert [a.reason for a in out if isinstance(a, Evidence)] == ["bad_new_view"]
    assert r.vc.in_view_change and 1 not in r.window.log


def test_f_plus_1_view_changes_make_a_replica_join_the_smallest_higher_view():
    """sec. 4.5.2: f+1 VIEW-CHANGEs for higher views include an honest replica's, so a
    replica whose own timer has not expired joins rather than lagging behind."""
    # set up
    from pbft_tasks.core.replica import Replica, ReplicaConfig
    r = Replica(3, ReplicaConfig(n=4, checkpoint_interval=4, log_window=8))
    # step: VIEW-CHANGEs for view 2 from 1 and view 3 from 2
    r.handle(ViewChange(2, 0, (), (), 1))
    out = r.handle(ViewChange(3, 0, (), (), 2))
    # check: it moved to view 2 (the smallest) and said so
    assert r.view == 2 and r.vc.in_view_change
    assert any(type(a.msg).__name__ == "ViewChange" and a.msg.new_view == 2
               for a in out if hasattr(a, "msg"))


def test_replica_restarted_during_a_view_change_resumes_it():
    """Persisted view and view-change state: a restart does not fall back to the old
    view, and it re-sends its VIEW-CHANGE."""
    # set up: node 2 is in a view change when it crashes
    c = cluster()
    c.request("a", 1, "k1", 1)
    c.stabilize()
    c.crash(0)
    for to in (1, 2, 3):
        c.request("a", 2, "k2", 2, to=to)
    c.stabilize()
    for _ in range(VC_TICKS + 1):
        c.tick()
    assert c.nodes[2].replica.vc.in_view_change
    c.crash(2)
    # step
    c.restart(2)
    # check: still in view 1 and its VIEW-CHANGE is on the wire again
    assert c.nodes[2].replica.view == 1
    assert any(isinstance(e.msg, ViewChange) and e.msg.sender == 2 for e in c.network)
    run_until_quiet(c, VC_TICKS + 5)
    assert [c.height(i) for i in (1, 2, 3)] == [2, 2, 2]


def _ticks_until_view_change(r, busy_pattern, limit: int = 1000) -> int | None:
    """Ticks (busy as ``busy_pattern(i)`` says) until ``r`` sends a VIEW-CHANGE."""
    from pbft_tasks.core.stimuli import Tick

    from .helpers import messages
    for i in range(1, limit + 1):
        if messages(r.handle(Tick(busy_pattern(i))), ViewChange):
            return i
    return None


def _waiting_backup(timeout: int):
    """Backup 1 has accepted a pre-prepare that never commits: its request timer runs."""
    from pbft_tasks.core.replica import Replica

    from .helpers import config, feed, preprepare
    r = Replica(1, config(view_change_ticks=timeout, retransmit_ticks=10_000, votes=MODE["votes"]))
    feed(r, [preprepare(1)])
    assert r._waiting() and not r.vc.in_view_change
    return r


def test_busy_ticks_count_a_quarter_toward_the_request_timer_and_never_stop_it():
    """A replica behind on its own queue (Tick.busy: messages for it wait unread) cannot
    tell a slow primary from its own backlog: under a flood its 1 s timer fired with the
    next pre-prepare already in its queue, and the view changes cascaded (n = 10,
    window 2000).  Busy ticks count 1/4, so a backlog that never empties (a faulty
    primary's flood) stretches the timeout to 4 x, and never stops it."""
    T = 12
    # set up / step / check: quiet ticks, the timeout as configured
    quiet = _ticks_until_view_change(_waiting_backup(T), lambda i: False)
    assert quiet == T + 1  # the first waiting tick starts the timer
    # all busy: four times as long, within one tick of rounding, but it does fire
    busy = _ticks_until_view_change(_waiting_backup(T), lambda i: True)
    assert busy is not None and 4 * T - 2 <= busy <= 4 * T + 2
    # a busy stretch, then quiet ticks: those count in full again
    mixed = _ticks_until_view_change(_waiting_backup(T), lambda i: i <= 2 * T)
    assert quiet < mixed < busy
    charged = (2 * T - 1) - 3 * (2 * T - 1) // 4  # the busy ticks after the first, at 1/4
    assert mixed == 2 * T + (T - charged)


def test_busy_ticks_slow_the_new_view_timer_the_same_way():
    """In a view change the NEW-VIEW timer (2f+1 asked, no NEW-VIEW) counts busy ticks a
    quarter too: the NEW-VIEW may be waiting in the queue."""
    from pbft_tasks.core.stimuli import Tick
    T = 10

    def moved_on_after(busy: bool) -> int:
        from pbft_tasks.core.replica import Replica

        from .helpers import config
        # set up: replica 2 asks for view 1, and so do 0 and 3: 2f+1, but view 1's
        # primary (1) is silent, so no NEW-VIEW comes
        r = Replica(2, config(view_change_ticks=T, retransmit_ticks=10_000, votes=MODE["votes"]))
        r._start_view_change(1, "test: request timer expired")
        for sender in (0, 3):
            r.handle(ViewChange(1, 0, (), (), sender))
        assert r.vc.in_view_change and r.view == 1
        # step: ticks until it moves on to view 2
        for i in range(1, 1000):
            r.handle(Tick(busy))
            if r.view == 2:
                return i
        raise AssertionError("never moved on to view 2")
    quiet, busy = moved_on_after(False), moved_on_after(True)
    assert quiet <= T + 1 and 4 * T - 4 <= busy <= 4 * T + 2


def test_the_primary_times_out_on_what_it_proposed_not_on_requests_queued_at_itself():
    """Sec. 4.4 gives the request timer to backups.  The primary's own queue (requests
    waiting for its proposal window) is no sign of a faulty primary: under a flood the
    primary timed out on it first and left its view alone.  A batch it proposed that
    does not execute still moves it on (the collector's and Twins' cases need that)."""
    from pbft_tasks.core.replica import Replica
    from pbft_tasks.core.stimuli import Tick

    from .helpers import config, messages, req
    cfg = config(max_batch=10, batch_timeout_ticks=10_000, view_change_ticks=5,
                 retransmit_ticks=10_000, votes=MODE["votes"])
    # set up: one request at the primary and at a backup; the batch is not cut yet
    primary, backup = Replica(0, cfg), Replica(1, cfg)
    for r in (primary, backup):
        r.handle(req("a", 1))
    assert primary.awaiting and not messages(primary.handle(Tick()), PrePrepare)
    # step / check: the backup times out, the primary does not
    out_p = [m for _ in range(20) for m in messages(primary.handle(Tick()), ViewChange)]
    out_b = [m for _ in range(20) for m in messages(backup.handle(Tick()), ViewChange)]
    assert out_p == [] and primary.view == 0
    assert [m.new_view for m in out_b] == [1]
    # once it proposes the batch, its own timer runs on it
    primary_cfg = config(max_batch=1, view_change_ticks=5, retransmit_ticks=10_000,
                         votes=MODE["votes"])
    p2 = Replica(0, primary_cfg)
    assert messages(p2.handle(req("a", 1)), PrePrepare)
    vcs = [m for _ in range(20) for m in messages(p2.handle(Tick()), ViewChange)]
    assert vcs and vcs[0].new_view == 1


def test_the_request_timer_restarts_once_when_the_next_seq_prepares():
    """From prepared on, the quorum (not the primary) completes a seq, so the timer
    restarts there, once per seq: at n = 10 all-to-all on two cores a loaded batch's
    three phases took about the whole 1 s timer and the backups voted a working primary
    out in its commit phase.  A seq that never commits still leads to a view change."""
    from pbft_tasks.core.replica import Replica
    from pbft_tasks.core.stimuli import Tick

    from .helpers import config, messages, prepare, preprepare
    T = 10
    r = Replica(1, config(view_change_ticks=T, retransmit_ticks=10_000, votes=MODE["votes"]))
    pp = preprepare(1)
    r.handle(pp)  # accepted: the timer runs
    ticks = [messages(r.handle(Tick()), ViewChange) for _ in range(T - 2)]
    assert not any(ticks)
    # step: seq 1 prepares here (2f prepares from backups, its own included)
    out = r.handle(prepare(pp, 2))
    if MODE["votes"] == "collector":  # the prepares come as the collector's certificate
        from .test_collector import cert
        out += r.handle(cert(pp, "prepare", (1, 2)))
    assert r.window.log[1].commits.get(1) is not None, "seq 1 prepared here"
    # check: another T - 2 ticks (2T - 4 since the pre-prepare) and no view change yet
    assert not any(messages(r.handle(Tick()), ViewChange) for _ in range(T - 2))
    # ... but the commit never comes: the timer, restarted once only, still fires
    later = [messages(r.handle(Tick()), ViewChange) for _ in range(T + 2)]
    assert any(later) and r.view == 1
