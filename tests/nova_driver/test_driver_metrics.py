"""The ``hdpbf`` driver's counters, scraped over HTTP as Prometheus would (``[hdpbf]
metrics_port``; mesh/openstack/driver_metrics.py).

Set up: a compute host and an API host on ``hdpbf+fake:/``, both with the same
metrics port, as nova's transports of one process would be.  Step: a step-2 read, its
commit, a step-1 read, then a call whose Instance primitive has no uuid (a miss).
Check: the scraped text, parsed by prometheus_client's parser, holds exactly those
counts, summed over the two drivers of the process, and the recorder's one put."""
from __future__ import annotations

from tests.services import free_port
from mesh.openstack.driver_metrics import DRIVER_METRICS, MISS_REASONS
from mesh.openstack.nova_wire import request_context
from pbft_tasks.metrics import scrape

from .driverkit import vnc

UUID = "6f5c3f0e-8a3b-4c0e-9d7e-0123456789ab"


def _values(samples, name: str) -> dict[tuple, float]:
    return {tuple(sorted(labels.items())): v for labels, v in samples.get(name, [])}


def test_reads_misses_and_records_are_scraped_with_their_exact_counts(kit):
    port = free_port()
    cmp_t = kit.transport(kit.conf(mesh_config=kit.mesh_config, client="cmp", embedded=True,
                                   metrics_port=port))
    ep, _ = kit.compute("cmp1", transport=cmp_t)
    api0 = kit.api(0, "api0", own_answers=False, metrics_port=port)  # same process, same port
    c = kit.client(api0, ep.host)
    first = vnc(c, UUID, ep.host)                       # step 2 (miss: missing)
    kit.settle()
    assert vnc(c, UUID, ep.host) == first               # step 1 from node 0's ledger
    no_uuid = {"nova_object.name": "Instance", "nova_object.data": {"host": ep.host}}
    assert c.call(request_context(), "get_vnc_console", instance=no_uuid,
                  console_type="novnc")["token"]       # step 2 (miss: no_uuid)
    kit.settle()

    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert set(DRIVER_METRICS) <= set(samples)
    assert _values(samples, "hdpbf_driver_reads_total") == {
        (("step", "1"),): 1, (("step", "1o"),): 0, (("step", "2"),): 2}
    misses = dict.fromkeys(MISS_REASONS, 0) | {"missing": 1, "no_uuid": 1}
    assert _values(samples, "hdpbf_driver_misses_total") == {
        (("reason", r),): n for r, n in misses.items()}
    assert _values(samples, "hdpbf_driver_step2_failures_total") == {(): 0}
    assert _values(samples, "hdpbf_driver_records_total") == {(): 1}
    assert _values(samples, "hdpbf_driver_not_recorded_total") == {
        (("reason", "deleted_meanwhile"),): 0, (("reason", "failure"),): 0,
        (("reason", "no_key"),): 1, (("reason", "no_token"),): 0}  # compute saw no uuid
    assert set(_values(samples, "hdpbf_driver_invalidations_total").values()) == {0}
    updates = {k: v for k, v in _values(samples, "hdpbf_driver_updates_total").items() if v}
    assert updates == {(("client", "cmp"), ("op", "put"), ("outcome", "queued")): 1,
                       (("client", "cmp"), ("op", "put"), ("outcome", "committed")): 1}
    assert _values(samples, "hdpbf_driver_updates_pending") == {(("client", "cmp"),): 0}
    assert _values(samples, "hdpbf_driver_recorder_stopped") == {(("client", "cmp"),): 0}
