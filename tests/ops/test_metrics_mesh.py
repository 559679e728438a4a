"""Every node worker of a real mesh serves its metrics over HTTP, and they tell the truth.

Set up: the folder's running 4-node mesh (tests/ops/stack.py ``Stack``), each worker
exporting on 127.0.0.1:(metrics_port_base + id) as mesh.json says.
Step: commit UPDATES updates; send node 1 one malformed message and one with an unknown
task name; read a console record through the API reader (step 1) and fail one step 2.
Check: by HTTP scrape of each node: heights equal the ledgers', blocks and requests
counted, commit latency observed once per block, view 0, no view changes or state
transfers yet, the rejected counter has both reasons on node 1 only; the reader's
counters are 1/1/1.
"""
from __future__ import annotations

import time

import pytest

from pbft_tasks.metrics import BROKER_METRICS, NODE_METRICS, READER_METRICS, node_url, scrape

from .stack import BAD_NODE, UPDATES
from tests.meshkit import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def one(samples: dict, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples ({samples.get(name)})"
    return found[0]


def test_each_node_endpoint_matches_its_ledger(loaded_stack):
    mesh = loaded_stack.mesh
    height, _ = mesh.wait_converged(timeout=60, at_least=1)
    for i in range(mesh.n):
        url = node_url(mesh.cfg, i)
        assert url == loaded_stack.node_url(i)  # where `hdpbf status` looks, by mesh.json
        node = str(i)

        def caught_up():
            s = scrape(url)
            return s if one(s, "hdpbf_ledger_height", node=node) == height else None
        s = wait_until(caught_up, 30, f"node {i}'s metrics to show height {height}")
        for name in NODE_METRICS + BROKER_METRICS:
            assert name in s or f"{name}_count" in s, f"node {i}: {name} missing"
        # converged and idle: nothing is left waiting in its queue, as RabbitMQ says
        wait_until(lambda: one(scrape(url), "hdpbf_queue_messages", node=node) == 0, 30,
                   f"node {i}'s queue to be empty")
        assert one(s, "hdpbf_ledger_height", node=node) == mesh.tip(i)[0] == height
        assert one(s, "hdpbf_blocks_committed_total", node=node) == height
        with mesh.reader(i) as r:
            executed = sum(len(b["requests"]) - len(b.get("skip", [])) for b in r.iter_blocks())
        assert one(s, "hdpbf_requests_committed_total", node=node) == executed >= UPDATES
        assert one(s, "hdpbf_commit_latency_seconds_count", node=node) == height
        # every latency and the head's age fall inside the stack's life (bounds of
        # logic, not of speed: how fast is the benchmarks' business)
        latency_sum = one(s, "hdpbf_commit_latency_seconds_sum", node=node)
        head_age = one(s, "hdpbf_ledger_head_age_seconds", node=node)
        assert 0 < latency_sum <= height * (time.monotonic() - loaded_stack.started_mono)
        assert 0 <= head_age <= time.time() - loaded_stack.started_wall
        assert one(s, "hdpbf_view", node=node) == 0
        assert one(s, "hdpbf_view_changes_total", node=node) == 0
        assert one(s, "hdpbf_state_transfers_total", node=node) == 0
        # the low watermark h the node itself reports, a checkpoint at most its height
        def same_h():
            h = mesh.local.status(i)["h"]
            return (h,) if one(scrape(url), "hdpbf_stable_checkpoint", node=node) == h else None
        (h,) = wait_until(same_h, 30, f"node {i}'s hdpbf_stable_checkpoint to equal its h",
                       interval=0.2)
        assert h % mesh.cfg.checkpoint_interval == 0 and h <= height


def test_bad_messages_are_counted_by_reason_on_their_node(loaded_stack):
    mesh = loaded_stack.mesh

    def counted():
        s = scrape(loaded_stack.node_url(BAD_NODE))
        return s if (one(s, "hdpbf_rejected_messages_total", node=str(BAD_NODE), reason="malformed") >= 1
                     and one(s, "hdpbf_rejected_messages_total", node=str(BAD_NODE),
                             reason="unknown_task") >= 1) else None
    s = wait_until(counted, 30, f"node {BAD_NODE} to count the malformed and unknown-task messages")
    assert one(s, "hdpbf_rejected_messages_total", node=str(BAD_NODE), reason="malformed") == 1
    assert one(s, "hdpbf_rejected_messages_total", node=str(BAD_NODE), reason="unknown_task") == 1
    assert sum(v for _, v in s["hdpbf_rejected_messages_total"]) == 2, s["hdpbf_rejected_messages_total"]
    status = mesh.local.status(BAD_NODE)  # the same counter NodeRuntime keeps
    assert status["rejected"] == {"malformed": 1, "unknown_task": 1}
    for i in range(mesh.n):
        if i != BAD_NODE:
            other = scrape(loaded_stack.node_url(i))
            assert sum(v for _, v in other["hdpbf_rejected_messages_total"]) == 0, f"node {i}"


def test_api_reader_counts_step1_and_step2(loaded_stack):
    s = scrape(f"http://127.0.0.1:{loaded_stack.api_port}/metrics")
    for name in READER_METRICS:
        assert name in s
    assert one(s, "hdpbf_step1_answers_total", node="0") == 1
    assert one(s, "hdpbf_step2_calls_total", node="0") == 1
    assert one(s, "hdpbf_step2_failures_total", node="0") == 1


def test_queue_depth_is_what_rabbitmq_holds_and_absent_when_it_cannot_say(broker_url):
    """hdpbf_queue_messages counts the ready messages of the queue it is given, and has no
    sample (rather than a made-up 0) for a queue the broker does not have."""
    import uuid

    from kombu import Connection, Producer
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pbft_tasks.brokers import QueueDepth
    from pbft_tasks.metrics import QueueDepthCollector

    def samples(collector):
        reg = CollectorRegistry()
        reg.register(collector)
        text = generate_latest(reg).decode()
        return [(s.labels, s.value) for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "hdpbf_queue_messages"]

    queue = f"test.depth.{uuid.uuid4().hex[:8]}"
    missing = QueueDepthCollector("7", QueueDepth(broker_url, queue))
    assert samples(missing) == []
    with Connection(broker_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=False, auto_delete=False)
        try:
            producer = Producer(ch, auto_declare=False)
            for i in range(3):
                producer.publish({"i": i}, routing_key=queue, serializer="json")
            c = QueueDepthCollector("7", QueueDepth(broker_url, queue))
            assert wait_until(lambda: samples(c) == [({"node": "7"}, 3.0)], 10,
                              f"3 messages in {queue}: {samples(c)}")
            assert samples(missing) == [({"node": "7"}, 3.0)]  # reconnects after an error
        finally:
            ch.queue_delete(queue)
