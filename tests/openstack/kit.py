"""The OpenStack side in one process, for the tests: an embedded mesh (same ledgers,
signatures and JSON as the workers, in-memory transport) and oslo.messaging's ``fake:``
driver.  Only the recorder's thread pumps the embedded mesh."""
from __future__ import annotations

import uuid

from mesh.embedded import EmbeddedMesh
from mesh.openstack import ComputeService, ConsoleReader, ConsoleRecorder, Opener, Sealer
from pbft_tasks.topology import console_writers, init_mesh, load_reader_identity, reader_keys


class Kit:
    """An embedded mesh with readers api0/api1, compute services and API readers."""

    def __init__(self, tmp_path, readers=("api0", "api1")):
        self.dir = tmp_path / "mesh"
        # the stand-in compute services all record as "admin" here
        self.cfg = init_mesh(self.dir, readers=readers, hosts={"admin": ("cmp1", "cmp2", "cmp3")})
        self.mesh = EmbeddedMesh(str(self.dir / "mesh.json"))
        self.url = f"fake:/{uuid.uuid4().hex}"  # a bus of this test's own
        self.hosts: dict[str, str] = {}
        self._close = []

    def ledger_path(self, node: int) -> str:
        return str(self.cfg.ledger_path(node))

    def opener(self, name: str) -> Opener:
        return Opener(name, load_reader_identity(self.cfg, name))

    def recorder(self, seal: bool = True, **kw) -> ConsoleRecorder:
        rec = ConsoleRecorder(self.mesh.client("admin"),
                              Sealer(reader_keys(self.cfg)) if seal else None, **kw)
        self._close.append(rec.close)
        return rec

    def compute(self, host: str, recorder=None, **kw) -> ComputeService:
        svc = ComputeService(host, self.url, recorder=recorder, **kw).start()
        self._close.insert(0, svc.stop)
        return svc

    def reader(self, node: int, reader: str | None = "api0", timeout: float = 2.0,
               **kw) -> ConsoleReader:
        r = ConsoleReader(self.ledger_path(node), self.url, self.hosts,
                          self.opener(reader) if reader else None, rpc_timeout=timeout,
                          writers=console_writers(self.cfg), **kw)
        self._close.append(r.close)
        return r

    def close(self) -> None:
        for fn in self._close:
            fn()
        self.mesh.close()


class FakeClock:
    """A wall clock a test moves by hand (``ConsoleReader(clock=...)``): expiry is judged
    without waiting for it, and no slow machine can make a token expire early."""

    def __init__(self, start: float | None = None):
        import time
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
