"""``python -m ledger bench-durability``: measure what each durability setting costs.

Owns: the measurement quoted in ``store``'s docstring, so the figures can be re-measured
on the machine that runs the mesh (fsync cost depends on the disk, the filesystem and
the hypervisor; re-measure before relying on it).

Rules: it writes only to a temporary directory (``--dir`` chooses the disk under test)
and measures, in order, after a warm-up of 50 commits:
- "vote": ``apply({"vote": ...}, [])``, one row per commit, the smallest transaction a
  replica makes (persisting a prepare/commit vote before sending it);
- "1-request block": a vote record plus a block of one put: four rows per commit;
- "300-request blocks": 20 blocks of 300 puts, one commit each, as tx/s.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Optional

from .memory import build_block, put
from .store import DURABILITY, LedgerStore


def measure(directory: str, durability: str, n: int = 400, batch: int = 300,
            blocks: int = 20) -> dict[str, float]:
    """Commits/s of small transactions and tx/s of big blocks for one durability."""
    path = os.path.join(directory, f"bench-{durability}.sqlite")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    out: dict[str, float] = {}
    with LedgerStore(path, durability) as store:
        for i in range(50):     # warm-up: the WAL file grows to its working size
            store.apply({"warm": i}, [])
        t0 = time.perf_counter()
        for i in range(n):
            store.apply({"vote": {"seq": i, "digest": "d" * 64}}, [])
        out["vote_commits_per_s"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n):
            block = build_block(store.height + 1, store.head, [put(f"k{i % 50}", i)])
            store.apply({"vote": {"seq": block["seq"]}}, [block])
        out["block1_commits_per_s"] = n / (time.perf_counter() - t0)
        built = []
        height, head = store.height, store.head
        for b in range(blocks):
            block = build_block(height + 1, head,
                                [put(f"key{(b * batch + j) % 1000}", {"n": j}) for j in range(batch)])
            built.append(block)
            height, head = block["seq"], block["hash"]
        t0 = time.perf_counter()
        for block in built:
            store.apply({"vote": {"seq": block["seq"]}}, [block])
        elapsed = time.perf_counter() - t0
        out["bulk_tx_per_s"] = blocks * batch / elapsed
        out["bulk_blocks_per_s"] = blocks / elapsed
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the ledger's durability cost")
    parser.add_argument("command", choices=["bench-durability"])
    parser.add_argument("--dir", default=None, help="directory on the disk to measure")
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for durability in DURABILITY:
            r = measure(directory, durability, n=args.n)
            print(f"{durability:7s} vote {r['vote_commits_per_s']:8.0f} commits/s | "
                  f"1-request block {r['block1_commits_per_s']:8.0f} commits/s | "
                  f"300-request blocks {r['bulk_tx_per_s']:8.0f} tx/s "
                  f"({r['bulk_blocks_per_s']:.0f} blocks/s)")


if __name__ == "__main__":
    main()
