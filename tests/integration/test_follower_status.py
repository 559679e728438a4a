"""A follower answers ``Status`` over the broker (docs/PROTOCOL.md sec. 5.9), so ``hdpbf
status`` shows a follower on another host or with a data dir of its own, whose
status.json it cannot read.  Real RabbitMQ, a real ``FollowerNode`` consuming in a
thread; no validators are needed for the status itself."""
from __future__ import annotations

import threading

import pytest
from kombu import Connection, Consumer, Producer, Queue

from mesh.ops import follower_status
from pbft_tasks.follower_node import STATUS_ANSWERS_PER_S, FollowerNode
from pbft_tasks.topology import MeshConfig, add_followers, init_mesh

from tests.meshkit import wait_until

pytestmark = [pytest.mark.broker]

# status requests sent at once: 40 s worth of answers at the follower's rate
FLOOD = 40 * STATUS_ANSWERS_PER_S


@pytest.fixture
def running(tmp_path, broker_url):
    init_mesh(tmp_path / "mesh", nodes=4, broker_url=broker_url)
    add_followers(tmp_path / "mesh", ["far"])
    cfg = MeshConfig.load(tmp_path / "mesh" / "mesh.json")
    elsewhere = tmp_path / "another-disk" / "far"
    node = FollowerNode(cfg, "far", data_dir=str(elsewhere))
    t = threading.Thread(target=node.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: node.connected, 20, "the follower consumes its queue")
        yield cfg, node, elsewhere
    finally:
        node.stop.set()
        t.join(10)
        node.close()
        with Connection(broker_url) as conn:
            conn.channel().queue_delete(cfg.follower("far").queue)


def test_status_over_the_broker_shows_a_follower_with_its_own_data_dir(running, broker_url):
    cfg, node, elsewhere = running
    # nothing in the mesh's default place: status.json is where the follower runs
    assert not (cfg.follower_data_dir("far") / "status.json").exists()
    answers = follower_status.ask(cfg, Connection(broker_url), timeout=5.0)
    assert set(answers) == {"far"}
    st = answers["far"]
    assert st["data_dir"] == str(elsewhere) and st["height"] == 0 and st["connected"]
    [row] = follower_status.rows(cfg, [], top=0, max_lag=64, answers=answers)
    assert row["via"] == "broker" and row["process"] == "elsewhere"
    assert row["healthy"], row["reason"]
    assert row["data_dir"] == str(elsewhere) and row["lag"] == 0
    # without the answer, only the default status.json is looked for: not there
    [row] = follower_status.rows(cfg, [], top=0, max_lag=64, answers={})
    assert not row["healthy"] and "no status.json" in row["reason"]


def test_status_answers_are_rate_limited_and_a_request_without_reply_to_is_evidence(
        running, broker_url):
    cfg, node, _ = running
    got: list[dict] = []
    with Connection(broker_url) as conn:
        ch = conn.channel()
        q = Queue("hdpbf.status.test-rate", exclusive=True, auto_delete=True, channel=ch)
        q.declare()
        with Consumer(ch, [q], callbacks=[lambda b, m: (got.append(b), m.ack())], accept=["json"]):
            p = Producer(ch, auto_declare=False)
            p.publish({"type": "Status"}, exchange="", routing_key=cfg.follower("far").queue,
                      serializer="json")                     # no reply_to: malformed
            # far more than the follower answers in the time they take to arrive, however
            # slow the machine: some must be refused
            sent = FLOOD
            for _ in range(sent):
                p.publish({"type": "Status"}, exchange="", routing_key=cfg.follower("far").queue,
                          serializer="json", reply_to=q.name, correlation_id="x")

            def settled():
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
                return len(got) + node.follower.rejected["status_rate"] >= sent
            wait_until(settled, 60, lambda: f"{sent} status requests answered or refused; "
                                            f"{len(got)} answered, {node.follower.rejected}")
    assert node.follower.rejected["malformed"] == 1
    assert node.follower.rejected["status_rate"] > 0
    # at most the rate per second over the time the requests took to arrive
    assert 1 <= len(got) < FLOOD
    assert len(got) + node.follower.rejected["status_rate"] == FLOOD
    assert all(b["name"] == "far" for b in got)
