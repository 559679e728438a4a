"""The critical path of one commit through the nodes' timing records
(mesh/bench/critical_path.py), on records made up by hand, and the records a node's
runs leave (pbft_tasks/stages.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from mesh.bench import critical_path as cp
from pbft_tasks.stages import StageClock, hop_key

MS = 1e-3


def send(key, at, cpu_ms, wait_ms):
    return [key, at, int(cpu_ms * 1e6), int(wait_ms * 1e6)]


def records():
    """A 4-node commit at t=0 from the client: primary 0, quorum completed at node 2 by
    node 1's prepare and node 3's commit; node 2 is busy with an earlier run when the
    commit arrives."""
    pp, prep, com = "PrePrepare v0 n1 from 0", "Prepare v0 n1 from 1", "Commit v0 n1 from 3"
    return {
        0: [[1 * MS, "Request admin 7", [send(pp, 3 * MS, 1.0, 0.5)], 3.2 * MS]],
        1: [[4 * MS, pp, [send(prep, 6 * MS, 1.5, 0.5)], 6.1 * MS]],
        3: [[4.5 * MS, pp, [send("Prepare v0 n1 from 3", 6 * MS, 1.0, 0.0)], 6.1 * MS],
            [7 * MS, prep, [send(com, 9 * MS, 1.0, 0.5)], 9.1 * MS]],
        2: [[7 * MS, prep, [send("Commit v0 n1 from 2", 8 * MS, 0.5, 0.5)], 10.5 * MS],
            [10.5 * MS, com, [send("Reply 2 admin 7", 12 * MS, 1.0, 0.5)], 12.1 * MS]],
    }


def test_the_path_follows_the_messages_that_completed_each_quorum():
    path = cp.walk(records(), "Reply 2 admin 7", 0.0, 13 * MS)
    assert [h["hop"] for h in path] == [
        "client -> node 0: Request", "node 0 -> node 1: PrePrepare",
        "node 1 -> node 3: Prepare", "node 3 -> node 2: Commit", "node 2 -> client: Reply"]
    first, _, _, commit, reply = path
    assert first == {"hop": "client -> node 0: Request", "broker_ms": 1.0, "cpu_ms": 1.0,
                     "fsync_ms": 0.5, "queue_ms": 0.5}
    # the commit was published at 9 ms; node 2 was busy until 10.5 ms, then ran it
    assert commit["queue_ms"] == pytest.approx(1.5) and commit["broker_ms"] == 0.0
    assert reply["broker_ms"] == 1.0 and reply["cpu_ms"] == 0.0
    # the hops add up to the commit: publish at 0, the client read the reply at 13 ms
    assert cp.totals(path)["total_ms"] == pytest.approx(13.0)


def test_a_reply_not_in_the_records_gives_no_path():
    assert cp.walk(records(), "Reply 1 admin 7", 0.0, 13 * MS) == []


def test_a_message_sent_outside_a_task_run_ends_the_walk_and_says_so():
    recs = records()
    recs[0] = []  # the pre-prepare was sent by the tick thread: not in the records
    path = cp.walk(recs, "Reply 2 admin 7", 0.0, 13 * MS)
    assert path[0]["hop"] == "? -> node 1: PrePrepare (sender not in the records)"
    assert len(path) == 4


def test_the_median_request_is_followed_from_its_last_reply():
    def pending(ts, lat, order):
        return SimpleNamespace(request=SimpleNamespace(timestamp=ts), sent_at=100.0,
                               all_at=100.0 + lat, votes=dict.fromkeys(order))
    ps = [pending(5, 0.02, [0, 1, 3, 2]), pending(7, 0.013, [0, 1, 3, 2]),
          pending(9, 0.001, [2, 1])]
    path, ms = cp.of_median_request(ps, "admin", records(), -100.0)
    assert ms == 13.0 and path[-1]["hop"] == "node 2 -> client: Reply"


def test_a_run_records_what_it_handled_and_when_each_message_left():
    c = StageClock()
    c.begin()
    c.handled({"type": "Prepare", "view": 0, "seq": 4, "sender": 1})
    c.handled({"type": "Prepare", "view": 0, "seq": 5, "sender": 1})  # the first one counts
    c.lap_wait("ledger", 10**9)  # a second of wall time, almost all of it waiting
    c.lap("sign")
    c.sending({"type": "Reply", "sender": 2, "client": "admin", "results": [{"timestamp": 7}]})
    c.end("ack")
    (start, handled, sends, end), = c.hops
    assert handled == "Prepare v0 n4 from 1" and start <= sends[0][1] <= end
    key, _, cpu_ns, wait_ns = sends[0]
    assert key == "Reply 2 admin 7" and wait_ns > 0.9e9 and cpu_ns < 0.1e9


def test_a_run_that_handled_nothing_leaves_no_record():
    c = StageClock()
    c.begin()
    c.end("ack")
    assert list(c.hops) == [] and c.runs == 1


def test_message_names_match_between_sender_and_receiver():
    assert hop_key({"type": "Request", "client": "admin", "timestamp": 3, "op": {}}) == "Request admin 3"
    assert hop_key({"type": "Commit", "view": 1, "seq": 2, "sender": 3, "sig": "x"}) == "Commit v1 n2 from 3"
