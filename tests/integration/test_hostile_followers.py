"""Every hostile message at once on a follower's queue, while honest blocks flow.

Set up: 4 real validator workers on the local RabbitMQ, one follower (a real ``hdpbf
follow`` process) listed in mesh.json, and a bare kombu producer on the default exchange
(anyone with broker credentials can publish to ``follower.<name>``).
Step: an honest client commits blocks while the producer publishes, to the follower's
queue, every body that used to stop or bloat a follower: undecodable bodies (invalid
UTF-8, text, an unknown kombu ``__type__``, JSON nested 200,000 deep), other content
types, a zlib bomb, 60 MiB pushes, a Blocks answer of 20,000 blocks, pushes of other
shapes, and a forged push for a seq the follower already installed.
Check: the follower reaches the validators' head (it kept installing through the
attack) and its lag in blocks comes back to 0; it counted every message under the
reason docs/PROTOCOL.md documents for it and nothing else; its queue holds nothing
unacknowledged or waiting; its resident memory stayed bounded throughout.
"""
from __future__ import annotations

import json
import threading
import zlib
from collections import Counter

import psutil
import pytest
from kombu import Connection, Producer

from mesh.bench.consensus import drive
from mesh.ops.followers import Followers
from pbft_tasks.topology import add_followers

from tests.integration.test_hostile_mesh import _unacked
from tests.meshkit import wait_until

pytestmark = pytest.mark.broker

NAME = "fh"
QUEUE = f"follower.{NAME}"
EACH = 8                 # copies of every small undecodable body (~50 in all)
RSS_BOUND = 1 << 30      # the follower's resident memory, at any sample (was 9.2 GB)


def _bomb() -> bytes:
    """~1 MiB of zlib that inflates to 1 GiB."""
    z = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    return b"".join(z.compress(chunk) for _ in range(1024)) + z.flush()


def attacks():
    """(reason, body, properties) for every kind of bad message."""
    undecodable = [b'{"type": "Block", "x": "\xff\xfe\xfd"}', b"not json at all",
                   b'{"__type__": "rogue", "__value__": 1}',
                   b'{"type": "Block", "block": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"]
    for _ in range(EACH):
        for body in undecodable:
            yield "undecodable", body, {}
        yield "bad_content", b"type: Block", {"content_type": "application/x-yaml"}
        yield "bad_content", b'{"type": "Block"}', {"content_type": "text/plain"}
    yield "bad_content", _bomb(), {"compression": "application/x-gzip"}
    big = b'{"type": "Block", "sender": 0, "block": "' + b"x" * (60 << 20) + b'"}'
    for _ in range(4):
        yield "oversize", big, {}
    blocks = [{"seq": i, "hash": "00" * 32} for i in range(1, 20_001)]
    yield "malformed", json.dumps({"type": "Blocks", "sender": 0, "blocks": blocks}).encode(), {}
    yield "malformed", json.dumps({"type": "Prepare", "sender": 0}).encode(), {}
    yield "malformed", json.dumps([1, 2, 3]).encode(), {}
    yield "malformed", json.dumps({"type": "Block", "sender": 0, "block": 5}).encode(), {}


def _publish(producer, body: bytes, props: dict) -> None:
    props = dict(props)
    headers = {}
    if "compression" in props:
        headers["compression"] = props.pop("compression")
    producer.publish(body, exchange="", routing_key=QUEUE, headers=headers,
                     content_type=props.get("content_type", "application/json"),
                     content_encoding="utf-8")


def test_a_follower_survives_every_attack_while_honest_blocks_flow(make_mesh):
    mesh = make_mesh(4, start=False)
    add_followers(mesh.config_path, [NAME])
    mesh.cfg = type(mesh.cfg).load(mesh.config_path)
    mesh.local.cfg = mesh.cfg
    mesh.start()
    fol = Followers(str(mesh.config_path), log_dir=mesh.local.log_dir)
    fol.purge(mesh.app)
    with fol:
        fol.start()
        fol.wait_started()
        proc = psutil.Process(fol.procs[NAME].pid)
        peak = [0]
        sampling = threading.Event()

        def sample():
            while not sampling.wait(0.05):
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.Error:
                    return
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        client = mesh.client()
        drive(client, 50, window=10, chunk=10, key_prefix="pre", every=True, timeout=180)
        tip = mesh.wait_converged(at_least=1)
        wait_until(lambda: (fol.status(NAME) or {}).get("height") == tip[0], 120,
                   lambda: f"follower {NAME} to install the first {tip[0]} blocks")

        expected: Counter = Counter()
        honest = threading.Thread(target=drive, args=(client, 300),
                                  kwargs=dict(window=10, chunk=10, key_prefix="during",
                                              every=True, timeout=300))
        honest.start()
        with Connection(mesh.cfg.broker_url) as conn:
            conn.ensure_connection(max_retries=3)
            producer = Producer(conn.channel(), auto_declare=False)
            for reason, body, props in attacks():
                _publish(producer, body, props)
                expected[reason] += 1
            # a forged push for a seq the follower has installed: conflicting evidence
            forged = {"type": "Block", "sender": 0, "executed_at": 0.0,
                      "block": {"seq": 1, "hash": "00" * 32}}
            _publish(producer, json.dumps(forged).encode(), {})
            expected["conflicting_block"] += 1
        honest.join()

        tip = mesh.wait_converged(at_least=1)

        def caught_up():
            st = fol.status(NAME) or {}
            return (st.get("height"), st.get("head")) == tip and st.get("lag_blocks") == 0
        wait_until(caught_up, 180, lambda: f"follower {NAME} to reach {tip[0]} with no lag; "
                   f"now {fol.status(NAME)}")
        wait_until(lambda: Counter(fol.status(NAME)["rejected"]) == expected, 120,
                   lambda: f"follower {NAME} to count exactly {dict(expected)}; it counted "
                   f"{fol.status(NAME)['rejected']}")
        wait_until(lambda: _unacked(mesh, QUEUE) == 0, 60,
                   lambda: f"{QUEUE} to have nothing unacknowledged")
        with mesh.app.connection_for_write() as conn:
            _, waiting, _ = conn.default_channel.queue_declare(QUEUE, passive=True)
        assert waiting == 0
        sampling.set()
        sampler.join()
        assert fol.procs[NAME].poll() is None, "the follower died"
        st = fol.status(NAME)
        assert st["reconnects"] == 0, "a message cost the follower its broker connection"
        print(f"follower peak RSS {peak[0] / 2**20:.0f} MiB; rejected {st['rejected']}")
        assert 0 < peak[0] < RSS_BOUND
