"""Messages per committed batch at low load, for whatever code is on ``PYTHONPATH``.

``python mesh/bench/lowload.py [COUNT] [GAP_S] [BROKER_URL]`` starts a 4-node mesh on
RabbitMQ (the default vhost unless BROKER_URL names another: node queues are purged, so
never beside another mesh on the same vhost; take ``/tmp/hdpbf-bench.lock``), sends COUNT puts one at a time, GAP_S seconds apart (an idle mesh between
them), and prints one JSON line: node-to-node messages sent per block made, and the
commit p50.  It uses only what older commits have too (``init_mesh``, ``LocalMesh``,
``MeshClient``, the ``sent`` and ``height`` of ``pbft.status``), so a checkout of an
older commit can be measured by the same script: ``PYTHONPATH=<checkout> python
/path/to/this/file 30 1.5`` (docs/benchmarks/consensus.md).  A figure, never an assertion.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

try:  # the current layout
    from mesh.ops.launcher import LocalMesh
    from pbft_tasks.topology import client_keys, init_mesh, load_client_identity, node_keys
except ImportError:  # an older checkout's layout on PYTHONPATH
    from mesh.launcher import LocalMesh
    from mesh.topology import client_keys, init_mesh, load_client_identity, node_keys
from mesh.client import BrokerClientTransport, MeshClient
from pbft_tasks.signing import Verifier



def protocol_sent(status: dict) -> int:
    """Messages a node sent for the protocol: its once-a-second statuses are not per
    batch (an older checkout does not count them apart)."""
    return status["sent"] - status.get("sent_status", 0)

def run(count: int = 200, gap: float = 0.0, broker: str | None = None) -> dict:
    base = tempfile.mkdtemp(prefix="hdpbf-lowload-")
    cfg = init_mesh(base, nodes=4, force=True, **({"broker_url": broker} if broker else {}))
    mesh = LocalMesh(f"{base}/mesh.json")
    mesh.purge()
    mesh.start()
    try:
        mesh.wait_ready(timeout=90)
        c = MeshClient("admin", load_client_identity(cfg, "admin"), 4,
                       Verifier(node_keys(cfg), client_keys(cfg)))
        c.transport = BrokerClientTransport(mesh.app, c)
        for i in range(20):  # warm up
            c.forget(c.wait(c.submit([c.put_request(f"warm{i}", i)]), every=True, timeout=30))
        before = mesh.statuses()
        lat = []
        for i in range(count):
            if gap and i:
                time.sleep(gap)  # an idle mesh between requests, as in interactive use
            p = c.wait(c.submit([c.put_request(f"low{i}", i)]), every=True, timeout=30)
            lat.append((p[0].all_at - p[0].sent_at) * 1000)
            c.forget(p)
        after = mesh.statuses()
        c.transport.close()
    finally:
        mesh.stop()
    blocks = after[0]["height"] - before[0]["height"]
    msgs = sum(protocol_sent(after[i]) - protocol_sent(before[i]) for i in after)
    lat.sort()
    return {"code": sys.modules["pbft_tasks"].__file__, "requests": count, "gap_s": gap,
            "blocks": blocks, "low_load_messages_per_batch": round(msgs / blocks, 2),
            "commit_p50_ms": round(lat[len(lat) // 2], 2)}


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 200,
                         float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
                         sys.argv[3] if len(sys.argv) > 3 else None)))
