"""The node runtime's stimulus log (pbft_tasks/node.py, core/trace.py), in an embedded
mesh (real ledgers, signatures and JSON; no broker): every stimulus has a node-wide
unique id, ``pbft.trace``'s answer lists the recent ones with what they caused, and a
committed request is followed across the nodes by its id.
"""
from __future__ import annotations

import json

from mesh.ops.mesh_status import followed, print_trace
from rich.console import Console


def test_a_committed_request_is_traced_on_every_node(embedded_mesh):
    mesh = embedded_mesh  # tests/conftest.py
    client = mesh.client()
    req = client.put_request("traced", 1)
    client.put("other", 2)
    client.wait(client.submit([req]))
    for _ in range(3):
        mesh.step()
    answers = {str(rt.id): json.loads(json.dumps(rt.trace_status())) for rt in mesh.nodes}
    for a in answers.values():
        ids = [e["id"] for e in a["trace"]]
        assert len(ids) == len(set(ids)) and all(i.startswith(f"{a['id']}.{a['run']}.") for i in ids)
    key = f"{req.client}/{req.timestamp}"
    traced = followed({"trace": answers}, key)
    for node, entries in traced.items():
        executed = [x for e in entries for x in e["actions"] if x.startswith("execute n")]
        assert len(executed) == 1, (node, [e["stimulus"] for e in entries])
        seq = executed[0].split()[1]
        assert all(seq in e["keys"] or key in e["keys"] for e in entries)
        assert any(e["stimulus"].startswith(f"Commit v0 {seq} ") for e in entries)
    assert any(e["stimulus"] == f"Request {key}" for e in traced["0"])
    out = Console(record=True, width=200)
    print_trace({"trace": answers}, out, key)
    text = out.export_text()
    assert f"about {key}" in text and "execute n" in text
