"""The metric names and what they count, on an embedded mesh (no broker, no workers).

Set up: a 4-node embedded mesh (same NodeRuntime, ledgers and signatures as the
workers) with NodeMetrics attached to every node, each in its own registry.
Step: commit some updates; hand one node a bad message.
Check: each registry's samples: heights equal the ledgers', counters moved, the commit
latency histogram saw every block, the rejected counter has its reason.
"""
from __future__ import annotations

import socket
import time

import pytest

from tests.services import free_port
from mesh.embedded import EmbeddedMesh
from pbft_tasks.metrics import (NODE_METRICS, READER_METRICS, NodeMetrics, export_reader,
                          node_metrics_port, reader_registry, scrape, serve)
from pbft_tasks.topology import ConfigError, MeshConfig, init_mesh


def samples(registry) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list] = {}
    for fam in registry.collect():
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(registry, name: str, **labels) -> float:
    v = registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v





@pytest.fixture
def embedded(tmp_path):
    init_mesh(tmp_path, nodes=4)
    mesh = EmbeddedMesh(str(tmp_path / "mesh.json"))
    metrics = [NodeMetrics(rt) for rt in mesh.nodes]
    yield mesh, metrics
    mesh.close()


def test_every_node_metric_is_exported_before_any_traffic(embedded):
    _, metrics = embedded
    for m in metrics:
        names = set(samples(m.registry))
        for name in NODE_METRICS:
            assert name in names or f"{name}_count" in names, f"node {m.node}: no {name}"
        assert value(m.registry, "hdpbf_ledger_height", node=m.node) == 0
        assert value(m.registry, "hdpbf_view_changes_total", node=m.node) == 0
        assert value(m.registry, "hdpbf_state_transfers_total", node=m.node) == 0
        assert value(m.registry, "hdpbf_rejected_messages_total", node=m.node,
                     reason="bad_signature") == 0


def test_commits_move_heights_counters_and_latency(embedded):
    mesh, metrics = embedded
    client = mesh.client()
    wall0, mono0 = time.time(), time.monotonic()
    for i in range(3):
        client.put(f"k{i}", i, timeout=10)
    for rt, m in zip(mesh.nodes, metrics):
        reg, node = m.registry, m.node
        height = value(reg, "hdpbf_ledger_height", node=node)
        assert height == rt.ledger.height >= 1
        assert value(reg, "hdpbf_blocks_committed_total", node=node) == height
        assert value(reg, "hdpbf_requests_committed_total", node=node) == 3
        assert value(reg, "hdpbf_commit_latency_seconds_count", node=node) == height
        # every latency and the head's age fall inside this test (bounds of logic, not
        # of speed: how fast is the benchmarks' business)
        latency_sum = value(reg, "hdpbf_commit_latency_seconds_sum", node=node)
        head_age = value(reg, "hdpbf_ledger_head_age_seconds", node=node)
        assert 0 < latency_sum <= height * (time.monotonic() - mono0)
        assert 0 <= head_age <= time.time() - wall0
        assert value(reg, "hdpbf_view", node=node) == 0


def test_a_bad_message_is_counted_with_its_reason(embedded):
    mesh, metrics = embedded
    assert mesh.nodes[1].handle({"type": "Prepare", "view": 0}) == "malformed"
    assert value(metrics[1].registry, "hdpbf_rejected_messages_total", node="1",
                 reason="malformed") == 1
    assert value(metrics[2].registry, "hdpbf_rejected_messages_total", node="2",
                 reason="malformed") == 0


def test_port_from_mesh_json_env_overrides_zero_disables(tmp_path):
    cfg = init_mesh(tmp_path, nodes=4)
    assert cfg.metrics_port_base == 9400
    assert node_metrics_port(cfg, 2, {}) == 9402
    assert node_metrics_port(cfg, 2, {"HDPBF_METRICS_PORT": "9555"}) == 9555
    assert node_metrics_port(cfg, 2, {"HDPBF_METRICS_PORT": "0"}) is None
    with pytest.raises(ValueError, match="HDPBF_METRICS_PORT"):
        node_metrics_port(cfg, 2, {"HDPBF_METRICS_PORT": "x"})
    cfg.metrics_port_base = 0
    assert node_metrics_port(cfg, 2, {}) is None


def test_metrics_port_base_round_trips_and_old_files_load(tmp_path):
    cfg = init_mesh(tmp_path, nodes=4)
    text = (tmp_path / "mesh.json").read_text()
    assert "metrics_port_base" not in text  # the default is not written: old readers cope
    cfg.metrics_port_base = 19000
    cfg.save(tmp_path / "mesh.json")
    assert MeshConfig.load(tmp_path / "mesh.json").metrics_port_base == 19000
    cfg.metrics_port_base = 65535
    with pytest.raises(ConfigError, match="metrics_port_base"):
        cfg.validate()


def test_reader_counters_over_http():
    class FakeReader:
        step1_hits, step2_calls, step2_failures = 5, 2, 1
    port = free_port()
    assert export_reader(FakeReader(), 3, port=port)
    assert export_reader(FakeReader(), 3, port=port)  # same port: served once, summed
    got = scrape(f"http://127.0.0.1:{port}/metrics")
    for name in READER_METRICS:
        assert name in got
    assert dict((l["node"], v) for l, v in got["hdpbf_step1_answers_total"])["3"] >= 10
    assert reader_registry().get_sample_value("hdpbf_step2_failures_total", {"node": "3"}) >= 2


def test_a_taken_port_is_logged_not_fatal(embedded, caplog):
    _, metrics = embedded
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert serve(metrics[0].registry, s.getsockname()[1]) is False
    assert "not started" in caplog.text
