"""The follower half of ``hdpbf bench consensus --followers K [--netns]``.

Owns: laying out and starting the benchmark's mesh with K followers (local processes,
or every validator and follower on a namespace host of its own with ``--netns``,
mesh/ops/netns_mesh.py), their process ids for CPU accounting, waiting for them to reach
the validators' head, and the follower figures of the JSON:

- ``followers``: K;
- ``follower_lag_p50_ms`` / ``follower_lag_p99_ms``: at low load (one request at a
  time), from the earliest ``executed_at`` a validator stamped on its push of a block to
  the follower's ledger transaction for it (pbft_tasks/follower_node.py), over every
  block of that phase at every follower;
- ``follower_lag_loaded_p50_ms`` / ``..._p99_ms``: the same during the throughput run;
- ``follower_catchup_s``: after the last commit of the throughput run, until every
  follower holds the validators' head.

Figures, never assertions (the tests check behaviour, not speed).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from .stats import percentile
from ..ops.followers import Followers
from ..ops.launcher import LocalMesh
from pbft_tasks.topology import (DEFAULT_BROKER_URL, DEFAULT_RESULT_BACKEND, MeshConfig, add_followers,
                                 init_mesh)


class FollowerRig:
    """The benchmark's mesh: n validators and K followers, local or in namespaces."""

    def __init__(self, base: str, nodes: int, followers: int, netns: bool,
                 broker: Optional[str], backend: Optional[str], max_batch: int,
                 durability: str, nice: int = 0, queue_type: str = "classic",
                 votes: str = "all-to-all") -> None:
        self.k = followers
        self.netns = None
        settings = {"max_batch": max_batch, "durability": durability, "queue_type": queue_type,
                    "votes": votes}
        if netns:
            from ..ops.netns_mesh import NetnsMesh
            self.netns = NetnsMesh(Path(base), nodes, followers, broker or DEFAULT_BROKER_URL,
                                   backend or DEFAULT_RESULT_BACKEND, prefix="hfolb", **settings)
            self.cfg = self.netns.cfg
            self.mesh: Any = self.netns.local
            self.followers = self.netns.followers
        else:
            kw = {k: v for k, v in (("broker_url", broker), ("result_backend", backend)) if v}
            cfg = init_mesh(base, nodes=nodes, force=True, **kw)
            for k, v in settings.items():
                setattr(cfg, k, v)
            cfg.save(f"{base}/mesh.json")
            names = [f"f{j}" for j in range(1, followers + 1)]
            if names:
                add_followers(base, names)
            self.cfg = MeshConfig.load(f"{base}/mesh.json")
            self.mesh = LocalMesh(f"{base}/mesh.json")
            self.followers = Followers(f"{base}/mesh.json", log_dir=self.mesh.log_dir)

        if nice:   # followers yield the CPU to validators, as if on hosts of their own
            for name in self.names:
                self.followers.wrap[name] = [*self.followers.wrap.get(name, ()), "nice", "-n", str(nice)]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.cfg.followers]

    def start(self, timeout: float = 120.0) -> None:
        if self.netns is not None:
            self.netns.up(timeout=timeout)
            return
        self.mesh.purge()
        self.followers.purge(self.mesh.app)
        self.mesh.start()
        self.mesh.wait_ready(timeout=timeout)
        if self.names:
            self.followers.start()
            self.followers.wait_started(timeout=timeout)

    def follower_pids(self) -> list[int]:
        return [p.pid for p in self.followers.procs.values()]

    def heights(self) -> list[int]:
        """Each follower's ledger height, read from its file (WAL: never blocks it)."""
        from ledger.reader import LedgerReader
        out = []
        for name in self.names:
            try:
                with LedgerReader(self.cfg.follower_data_dir(name) / "ledger.sqlite") as r:
                    out.append(r.height())
            except Exception:   # not created yet
                out.append(0)
        return out

    def wait_followers(self, height: int, timeout: float = 120.0) -> Optional[float]:
        """Seconds until every follower is at ``height`` (None if not within timeout)."""
        t0 = time.perf_counter()
        while True:
            if all(h >= height for h in self.heights()):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                return None
            time.sleep(0.01)

    def stop(self) -> None:
        if self.netns is not None:
            self.netns.down()
            return
        try:
            self.followers.stop()
        finally:
            self.mesh.stop()

    def lag_samples(self) -> list[tuple[float, float]]:
        """Every follower's (installed at, lag s) pairs; call after ``stop``."""
        out: list[tuple[float, float]] = []
        for name in self.names:
            try:
                doc = json.loads((self.cfg.follower_data_dir(name) / "lags.json").read_text())
            except (OSError, ValueError):
                continue
            out += [(t, lag) for t, lag in doc.get("samples", [])]
        return out

    def pushes(self) -> int:
        """Pushed blocks the followers received in all (their last status; after stop)."""
        return sum((self.followers.status(n) or {}).get("pushes", 0) for n in self.names)

    def rejected(self) -> dict[str, dict]:
        out = {}
        for name in self.names:
            st = self.followers.status(name)
            if st and st.get("rejected"):
                out[name] = st["rejected"]
        return out


def lag_figures(samples: list[tuple[float, float]], low: tuple[float, float],
                loaded: tuple[float, float]) -> dict:
    """Lag percentiles (ms) of the samples installed in the low-load and loaded phases
    (wall-clock windows; a block's push may land just after its phase, so each window
    gets a second of grace)."""
    def phase(lo: float, hi: float) -> list[float]:
        return [lag * 1000 for t, lag in samples if lo <= t <= hi + 1.0]
    lo_ms, ld_ms = phase(*low), phase(*loaded)
    r = lambda v: round(v, 3) if v == v else None  # noqa: E731  (NaN -> None)
    return {"follower_lag_p50_ms": r(percentile(lo_ms, 50)),
            "follower_lag_p99_ms": r(percentile(lo_ms, 99)),
            "follower_lag_samples": len(lo_ms),
            "follower_lag_loaded_p50_ms": r(percentile(ld_ms, 50)),
            "follower_lag_loaded_p99_ms": r(percentile(ld_ms, 99)),
            "follower_lag_loaded_samples": len(ld_ms)}


__all__ = ["FollowerRig", "lag_figures"]
