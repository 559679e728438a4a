"""The follower figure of docs/benchmarks/followers.md: tx/s and follower lag against K (followers) and n.

    python -m mesh.bench.followers_plot RESULT.json ... --png docs/img/bench-followers.png

Each RESULT.json is one ``hdpbf bench consensus --json`` file.  Left: committed tx/s
against K at the smallest n; middle: follower lag p50/p99 (low load and under load)
against K; right: tx/s and messages per batch against n (K = 0 runs).
"""
from __future__ import annotations

import argparse
import json
from typing import Optional


def _load(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        with open(p) as fh:
            out.append(json.load(fh))
    return out


def plot(results: list[dict], png: str, title: Optional[str] = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n0 = min(r["nodes"] for r in results)
    by_k = sorted((r for r in results if r["nodes"] == n0), key=lambda r: r.get("followers") or 0)
    by_n = sorted((r for r in results if not r.get("followers")), key=lambda r: r["nodes"])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2))
    ks = [r.get("followers") or 0 for r in by_k]
    a.plot(ks, [r["tx_per_s"] for r in by_k], "o-")
    a.set_xlabel(f"followers K (n = {n0})")
    a.set_ylabel("committed tx/s")
    a.set_ylim(bottom=0)
    a.grid(alpha=0.3)
    lagged = [r for r in by_k if r.get("follower_lag_p50_ms") is not None]
    lk = [r["followers"] for r in lagged]
    for key, label, style in (("follower_lag_p50_ms", "p50, low load", "o-"),
                              ("follower_lag_p99_ms", "p99, low load", "o--"),
                              ("follower_lag_loaded_p50_ms", "p50, under load", "s-"),
                              ("follower_lag_loaded_p99_ms", "p99, under load", "s--")):
        b.plot(lk, [r.get(key) for r in lagged], style, label=label)
    b.set_xlabel(f"followers K (n = {n0})")
    b.set_ylabel("lag, executed -> installed at follower (ms)")
    b.set_yscale("log")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    ns = [r["nodes"] for r in by_n]
    c.plot(ns, [r["tx_per_s"] for r in by_n], "o-", label="tx/s")
    c.set_xlabel("validators n (K = 0)")
    c.set_ylabel("committed tx/s")
    c.set_ylim(bottom=0)
    c.grid(alpha=0.3)
    c2 = c.twinx()
    c2.plot(ns, [r["messages_per_batch"] for r in by_n], "s--", color="tab:red",
            label="messages per batch")
    c2.set_ylabel("messages per batch", color="tab:red")
    fig.suptitle(title or "HdPBF followers and validators (hdpbf bench consensus)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--png", required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    plot(_load(args.results), args.png, args.title)


if __name__ == "__main__":
    main()
