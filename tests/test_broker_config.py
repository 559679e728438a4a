"""Broker settings by queue type (pbft_tasks/brokers.py) and the places a cluster's URL
list travels: Celery settings, node queue declarations, the worker's consumer steps,
oslo.messaging's transport URL, and redacted output.  No broker needed; the real
cluster is tests/broker_cluster/."""
from __future__ import annotations

import pytest

from mesh.ops.broker_cluster import BrokerCluster
from mesh.openstack.rpc import transport_url_from_broker
from mesh.ops.stack import redact
from pbft_tasks import transport
from pbft_tasks.brokers import PUBLISH_RETRY, celery_queue_settings, queue_arguments
from pbft_tasks.brokers import celery_settings
from pbft_tasks.celery_app import NodeConsumer


def test_classic_is_the_single_broker_default():
    assert queue_arguments("classic") is None and celery_queue_settings("classic") == {}
    s = celery_settings("amqp://a//", "redis://r/0")
    assert "task_default_queue_type" not in s and "broker_transport_options" not in s


def test_quorum_declares_quorum_queues_and_confirms_publishes():
    assert queue_arguments("quorum") == {"x-queue-type": "quorum"}
    s = celery_settings("amqp://a//;amqp://b//", "redis://r/0", "quorum")
    assert s["broker_url"] == "amqp://a//;amqp://b//"  # kombu's failover form, as is
    assert s["task_default_queue_type"] == s["task_create_missing_queue_type"] == "quorum"
    assert s["broker_transport_options"] == {"confirm_publish": True}
    assert s["task_acks_late"] and s["worker_prefetch_multiplier"] >= 16
    assert PUBLISH_RETRY["max_retries"] is None and PUBLISH_RETRY["interval_start"] == 0


def test_unknown_queue_type_fails_loudly():
    with pytest.raises(ValueError, match="queue_type"):
        queue_arguments("stream")


def test_declare_mesh_declares_quorum_node_queues():
    calls = []

    class Channel:
        def __getattr__(self, name):
            return lambda *a, **kw: calls.append((name, a, kw))

    transport.declare_mesh(Channel(), [0, 1, 2, 3], "quorum")
    declared = [(a[0], kw) for name, a, kw in calls if name == "queue_declare"]
    assert [q for q, _ in declared] == ["node.0", "node.1", "node.2", "node.3"]
    for _, kw in declared:  # a quorum queue must be durable and never auto-deleted
        assert kw == {"durable": True, "auto_delete": False,
                      "arguments": {"x-queue-type": "quorum"}}


def test_worker_consumer_has_no_native_delayed_delivery():
    steps = NodeConsumer.Blueprint.default_steps
    assert not any(s.endswith(":DelayedDelivery") for s in steps)
    assert any(s.endswith(":Tasks") for s in steps)


def test_oslo_transport_url_for_a_cluster_lists_every_host():
    urls = "amqp://u:p@h1:5681//;amqp://u:p@h2:5682//;amqp://u:p@h3:5683//"
    assert transport_url_from_broker(urls) == "rabbit://u:p@h1:5681,u:p@h2:5682,u:p@h3:5683/"
    with pytest.raises(ValueError, match="different vhosts"):
        transport_url_from_broker("amqp://u:p@h1//;amqp://u:p@h2/other")


def test_redact_hides_every_password_of_a_url_list():
    out = redact("amqp://u:secret1@h1:5681//;amqp://u:secret2@h2:5682//")
    assert "secret" not in out and out.count("***") == 2


def test_cluster_layout_ports_names_and_failover_url(tmp_path):
    c = BrokerCluster.plan(tmp_path / "cl", 3, base_port=6001, dist_base=26001, prefix="x")
    assert [n.name for n in c.nodes] == ["x1@localhost", "x2@localhost", "x3@localhost"]
    assert [n.port for n in c.nodes] == [6001, 6002, 6003]
    assert c.broker_url == ";".join(f"amqp://guest:guest@127.0.0.1:{p}//" for p in (6001, 6002, 6003))
    (tmp_path / "cl").mkdir()
    c.save()
    assert BrokerCluster.load(tmp_path / "cl") == c
    assert c.pid(c.nodes[0]) is None  # nothing running, nothing to kill


def test_broker_cluster_commands_refuse_bad_input_without_starting_anything(tmp_path):
    from click.testing import CliRunner

    from mesh.cli import main
    runner = CliRunner()
    res = runner.invoke(main, ["broker-cluster", "down", "--dir", str(tmp_path / "none")])
    assert res.exit_code == 1 and "no broker cluster in" in res.output
    res = runner.invoke(main, ["broker-cluster", "up", "--nodes", "0", "--dir", str(tmp_path / "c")])
    assert res.exit_code == 1 and "--nodes must be a positive integer" in res.output
    assert not (tmp_path / "c").exists()


def test_bench_backlog_refuses_a_bad_prefetch_list():
    from click.testing import CliRunner

    from mesh.cli import main
    for bad in ("0,64", "a,b", ""):
        res = CliRunner().invoke(main, ["bench", "backlog", "--prefetch", bad])
        assert res.exit_code == 2 and "--prefetch takes integers" in res.output, res.output
