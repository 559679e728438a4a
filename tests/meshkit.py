"""A mesh of real workers for the tests, condition waits, and the ledger checks
(identical tips, values on every node, audited certified chains).  The fixture that
makes one per test is ``make_mesh`` (tests/conftest.py)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ledger.audit import audit_chain
from ledger.format import LedgerError
from ledger.reader import LedgerReader
from mesh.client import BrokerClientTransport, MeshClient, SubmitTimeout
from mesh.ops.launcher import LocalMesh
from pbft_tasks.topology import (MeshConfig, client_keys, init_mesh, load_client_identity,
                                 node_keys)
from pbft_tasks.core.messages import Commit, from_wire
from pbft_tasks.core.quorum import quorum
from pbft_tasks.signing import Rejected, Verifier

from .services import backend_url


# Legitimate traffic leaves at most a few hundred messages waiting in a node's queue
# (requests travel 64 to a message; a block costs ~2n^2 votes).  Many thousands waiting
# means replicas are answering each other in a loop.
STORM_READY = 5000
STORM_BUG = ("replicas answering each other's retransmissions in a loop (the rate limit "
             "of Replica._help_behind, pbft_tasks/core/catchup.py, was meant to prevent it)")


class MessageStorm(AssertionError):
    """Node queues grew past STORM_READY: replicas are sending to each other in a loop."""


# -- waiting without sleeping blindly --------------------------------------------------

def wait_until(cond: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; fail saying ``what`` on timeout
    (a callable ``what`` is called then, so it can describe the state at that moment)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except MessageStorm:
            raise
        except Exception as exc:  # e.g. a ledger file not created yet
            last_exc = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            desc = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {desc}{extra}")
        time.sleep(interval)


# -- a mesh of real workers ----------------------------------------------------------------

class Mesh:
    """One test's mesh: its config, its LocalMesh of workers, clients and ledger views."""

    def __init__(self, base: Path, n: int, broker_url: str, hosts: dict | None = None,
                 **settings: Any):
        """``hosts``: client -> the compute hosts it speaks for (init_mesh's)."""
        cfg = init_mesh(base, nodes=n, broker_url=broker_url, result_backend=backend_url(),
                        hosts=hosts, admins=settings.pop("admins", ()))
        for name, value in settings.items():
            setattr(cfg, name, value)
        cfg.save(base / "mesh.json")
        self.base = base
        self.config_path = base / "mesh.json"
        self.cfg = MeshConfig.load(self.config_path)
        self.local = LocalMesh(str(self.config_path))
        self.app = self.local.app
        self.verifier = Verifier(node_keys(self.cfg), client_keys(self.cfg))
        self._transports: list[BrokerClientTransport] = []

    @property
    def n(self) -> int:
        return self.cfg.n

    def start(self, timeout: float = 120.0) -> "Mesh":
        self.local.purge()
        self.local.start()
        self.local.wait_ready(timeout=timeout)
        return self

    def client(self, timeout: float = 2.0) -> MeshClient:
        c = MeshClient("admin", load_client_identity(self.cfg, "admin"), self.n,
                       Verifier(node_keys(self.cfg), client_keys(self.cfg)), timeout=timeout)
        c.transport = BrokerClientTransport(self.app, c)
        self._transports.append(c.transport)
        return c

    def log_path(self, node_id: int) -> Path:
        return Path(self.local.log_dir) / f"node{node_id}.log"

    def log_text(self, node_id: int) -> str:
        return self.log_path(node_id).read_text(errors="replace")

    def ledger_path(self, node_id: int) -> Path:
        return self.cfg.ledger_path(node_id)

    def reader(self, node_id: int) -> LedgerReader:
        return LedgerReader(self.ledger_path(node_id))

    def tip(self, node_id: int) -> tuple[int, str]:
        with self.reader(node_id) as r:
            return r.height(), r.head()

    def tips(self) -> dict[int, tuple[int, str]]:
        return {i: self.tip(i) for i in range(self.n)}

    def wait_converged(self, timeout: float = 120.0, at_least: int = 1) -> tuple[int, str]:
        """Wait until every node's ledger has one (height, head), at least ``at_least``."""
        def same():
            self.check_no_storm()
            tips = set(self.tips().values())
            if len(tips) == 1:
                (tip,) = tips
                return tip if tip[0] >= at_least else None
            return None
        return wait_until(same, timeout, lambda: f"all {self.n} ledgers to reach one height "
                                                 f"and head (at least {at_least}); now "
                                                 f"{self.describe_tips()}", interval=0.2)

    def queue_depths(self) -> dict[int, int]:
        """Messages ready (not yet delivered to a worker) in each node's queue."""
        with self.app.connection_for_write() as conn:
            ch = conn.default_channel
            return {n.id: ch.queue_declare(n.queue, passive=True).message_count
                    for n in self.cfg.nodes}

    def check_no_storm(self) -> None:
        depths = self.queue_depths()
        if max(depths.values()) > STORM_READY:
            raise MessageStorm(f"message storm: ready messages per node queue {depths} "
                               f"(> {STORM_READY}); suspected cause: {STORM_BUG}")

    def wait_replies(self, client: MeshClient, batch: list, timeout: float = 90.0,
                     every: bool = False) -> list:
        """``client.wait`` in slices, failing fast (MessageStorm) if queues explode."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_no_storm()
            left = deadline - time.monotonic()
            try:
                return client.wait(batch, timeout=max(0.1, min(5.0, left)), every=every)
            except SubmitTimeout:
                if left <= 5.0:
                    raise

    def wait_quiet(self, timeout: float = 30.0, samples: int = 5, interval: float = 0.3) -> None:
        """Wait until no client sending means no node sending: every node queue is empty
        at ``samples`` consecutive looks.  Fails on a message storm."""
        seen = {"empty": 0, "depths": None}

        def quiet():
            self.check_no_storm()
            depths = self.queue_depths()
            seen["depths"] = depths
            seen["empty"] = seen["empty"] + 1 if not any(depths.values()) else 0
            return seen["empty"] >= samples

        try:
            wait_until(quiet, timeout, lambda: "", interval=interval)
        except pytest.fail.Exception:
            raise MessageStorm(f"the node queues did not stay empty with no client sending; "
                               f"ready messages now {seen['depths']}; suspected cause: "
                               f"{STORM_BUG}") from None

    def describe_tips(self) -> Any:
        try:
            return {i: (h, head[:12]) for i, (h, head) in self.tips().items()}
        except Exception as exc:
            return repr(exc)

    def stop(self) -> None:
        for t in self._transports:
            try:
                t.close()
            except Exception:
                pass
        self._transports.clear()
        self.local.stop()


# -- checks on ledgers ----------------------------------------------------------------------------

def certificate_checker(cfg: MeshConfig, verifier: Verifier) -> Callable[[dict], None]:
    """A ``verify_certificate`` hook for ``audit_chain``: 2f+1 commits from distinct
    replicas of this mesh, each for this block's view, seq and digest, each verifying."""
    need = quorum(cfg.n)

    def check(block: dict) -> None:
        cert = block.get("certificate")
        assert isinstance(cert, list), f"block {block['seq']}: no certificate"
        commits = [from_wire(w) for w in cert]
        senders = [c.sender for c in commits]
        assert len(set(senders)) == len(senders), f"duplicate senders {senders}"
        assert len(senders) >= need, f"{len(senders)} commits, need 2f+1 = {need}"
        for c in commits:
            assert isinstance(c, Commit), f"a {type(c).__name__} in a commit certificate"
            assert 0 <= c.sender < cfg.n, f"commit from node {c.sender} outside the mesh"
            assert (c.view, c.seq, c.digest) == (block["view"], block["seq"], block["digest"]), \
                f"commit of node {c.sender} is for another block"
            try:
                verifier.check(c)
            except Rejected as exc:
                raise AssertionError(f"commit of node {c.sender}: {exc.reason}") from None

    return check


def audit_node(mesh: Mesh, node_id: int) -> int:
    """Audit node ``node_id``'s whole chain with certificates; return how many blocks."""
    check = certificate_checker(mesh.cfg, mesh.verifier)
    with mesh.reader(node_id) as r:
        blocks = list(r.iter_blocks())
        height = r.height()
    assert len(blocks) == height, f"node {node_id}: {len(blocks)} blocks stored, height {height}"
    try:
        audit_chain(blocks, check)
    except LedgerError as exc:
        pytest.fail(f"node {node_id}'s chain fails its audit: {exc}")
    return len(blocks)


def assert_values(mesh: Mesh, expected: dict[str, Any]) -> None:
    """Every key reads back with its value on every node."""
    for i in range(mesh.n):
        with mesh.reader(i) as r:
            wrong = {k: r.get_value(k, default="<missing>") for k, v in expected.items()
                     if r.get_value(k, default="<missing>") != v}
        assert not wrong, (f"node {i}: {len(wrong)} of {len(expected)} keys read back wrong, "
                           f"e.g. {dict(list(wrong.items())[:5])}")
