"""``hdpbf bench consensus --baseline REV``: an older commit and the working tree, measured
alternately in one run, on fresh RabbitMQ vhosts.

Owns: the A/B of the consensus bench.  ``git archive REV`` unpacks the baseline into a
temporary directory; every run is ``hdpbf bench consensus`` in a subprocess of the same
Python (the same venv), with ``PYTHONPATH`` and the working directory set to the tree
under test, so the bench, the client and the Celery workers it starts all run that
tree's code.  Each run gets a vhost of its own (``rabbitmqctl add_vhost``, deleted after
the run): the bench purges the node queues of its vhost, and nothing another run left
behind reaches it.

Rules:
- Alternation cancels a drift in the machine's load: round 1 runs the baseline then the
  tree, round 2 the tree then the baseline, and so on (A B, B A, A B, ...), so neither
  side always runs first.
- Only flags every bench since the baseline accepts are passed (``--nodes`` one size,
  ``--requests``, ``--window``, ``--max-batch``, ``--low-load``, ``--durability``,
  ``--broker``, ``--backend``, ``--json``); the tree's run may add its own (``--votes``).
- Figures, never assertions.  A run that fails (its exit code, or no JSON) is a missing
  round with its reason: the medians are over the rounds that ran, and a side with no
  round has no median (``None``, and ``missing`` says why).
- Ratios are tree / baseline: ``tx_per_s_ratio`` > 1 is faster, ``commit_p50_ratio`` < 1
  is a shorter commit.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

SIDES = ("baseline", "tree")
FIGURES = ("tx_per_s", "commit_p50_ms")
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
VHOST_PREFIX = "hdpbf-ab-"


def order(rounds: int) -> list[tuple[int, str]]:
    """(round, side) in run order: A B, B A, A B, ... (round numbers from 1)."""
    out = []
    for r in range(1, rounds + 1):
        sides = SIDES if r % 2 else SIDES[::-1]
        out += [(r, s) for s in sides]
    return out


def summarize(results: list[dict], rounds: int) -> dict:
    """The A/B's JSON from the runs' results (each ``{"side", "round", ...figures}`` or
    with ``failed``): per-round lists (None where a round is missing), medians, ratios."""
    per: dict[str, dict[str, list]] = {s: {f: [None] * rounds for f in FIGURES} for s in SIDES}
    missing: dict[str, str] = {}
    for res in results:
        side, r = res["side"], res["round"]
        if "failed" in res:
            missing[f"{side} round {r}"] = res["failed"]
            continue
        for f in FIGURES:
            per[side][f][r - 1] = res.get(f)
    med = {s: {f: _median(per[s][f]) for f in FIGURES} for s in SIDES}
    for s in SIDES:
        if med[s]["tx_per_s"] is None:
            missing.setdefault(f"{s} medians", f"no {s} round ran")
    out = {
        "rounds": rounds,
        "baseline_tx_per_s": med["baseline"]["tx_per_s"],
        "tx_per_s": med["tree"]["tx_per_s"],
        "baseline_commit_p50_ms": med["baseline"]["commit_p50_ms"],
        "commit_p50_ms": med["tree"]["commit_p50_ms"],
        "tx_per_s_ratio": _ratio(med["tree"]["tx_per_s"], med["baseline"]["tx_per_s"]),
        "commit_p50_ratio": _ratio(med["tree"]["commit_p50_ms"], med["baseline"]["commit_p50_ms"]),
        "baseline_tx_per_s_rounds": per["baseline"]["tx_per_s"],
        "tx_per_s_rounds": per["tree"]["tx_per_s"],
        "baseline_commit_p50_ms_rounds": per["baseline"]["commit_p50_ms"],
        "commit_p50_ms_rounds": per["tree"]["commit_p50_ms"],
        "order": [f"{s} #{r}" for r, s in order(rounds)],
        "missing": missing,
    }
    return out


def _median(values: list) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bench_args(side: str, nodes: int, requests: int, low_load: int, window: int,
               max_batch: int, durability: str, broker: str, backend: str | None,
               json_path: str, votes: str | None = None) -> list[str]:
    """The ``hdpbf bench consensus`` arguments of one run (flags the baseline knows)."""
    args = ["bench", "consensus", "--nodes", str(nodes), "--requests", str(requests),
            "--low-load", str(low_load), "--window", str(window), "--max-batch", str(max_batch),
            "--durability", durability, "--broker", broker, "--json", json_path]
    if backend:
        args += ["--backend", backend]
    if side == "tree" and votes:
        args += ["--votes", votes]
    return args


def archive(rev: str, repo: Path, into: Path) -> Path:
    """``git archive REV`` of ``repo`` unpacked in ``into``; raises with git's words if
    REV is unknown."""
    res = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev],
                         capture_output=True)
    if res.returncode != 0:
        raise ValueError(f"git archive {rev} in {repo}: {res.stderr.decode().strip()}")
    tar_path = into / "baseline.tar"
    tar_path.write_bytes(res.stdout)
    tree = into / "baseline"
    tree.mkdir()
    with tarfile.open(tar_path) as tar:
        tar.extractall(tree, filter="data")
    tar_path.unlink()
    return tree


def vhost_url(broker: str, vhost: str) -> str:
    parts = urllib.parse.urlsplit(broker)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc,
                                    "/" + urllib.parse.quote(vhost, safe=""), "", ""))


def _ctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise OSError("rabbitmqctl is not on PATH: the A/B needs it for a fresh vhost a run")
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise OSError(f"rabbitmqctl {' '.join(args)}: {(res.stderr or res.stdout).strip()}")


@contextlib.contextmanager
def fresh_vhost(broker: str) -> Iterator[str]:
    """The broker URL of a new vhost (guest may use it), deleted afterwards."""
    vhost = f"{VHOST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost_url(broker, vhost)
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _ctl("delete_vhost", vhost)


# Run by the subprocess: says which code it imported, then is ``hdpbf``.
_ENTRY = ("import sys, mesh, pbft_tasks; "
          "print('code under test:', mesh.__file__, pbft_tasks.__file__, file=sys.stderr); "
          "from mesh.cli import main; sys.argv[0] = 'hdpbf'; main()")


def run_one(tree: Path, args: list[str], json_path: str, timeout: float) -> dict:
    """One bench run of ``tree``; its JSON, or ``{"failed": why}``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    try:
        res = subprocess.run([sys.executable, "-c", _ENTRY, *args], cwd=tree, env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {timeout:.0f} s"}
    code = next((ln for ln in res.stderr.splitlines() if ln.startswith("code under test:")), "")
    if str(tree) not in code:  # our own bug: the run would measure the wrong code
        raise RuntimeError(f"the run of {tree} imported other code: {code or res.stderr[-2000:]}")
    if res.returncode != 0 or not os.path.exists(json_path):
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"failed": f"exit {res.returncode}: {' | '.join(tail)}"}
    with open(json_path) as fh:
        return json.load(fh)


def run_ab(baseline: str, rounds: int = 3, nodes: int = 4, requests: int = 5000,
           low_load: int = 200, window: int = 2000, max_batch: int = 256,
           durability: str = "full", broker: str | None = None, backend: str | None = None,
           votes: str | None = None, tree: Path | None = None, timeout: float = 1800.0,
           say: Callable[[str], Any] = print) -> dict:
    """``rounds`` rounds of baseline and tree alternately; the summary (``summarize``)
    with every run's own JSON under ``runs``."""
    tree = tree or Path(__file__).resolve().parents[2]  # mesh/bench/ab.py -> the tree
    broker = broker or DEFAULT_BROKER
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hdpbf-ab-") as tmp:
        base_tree = archive(baseline, tree, Path(tmp))
        trees = {"baseline": base_tree, "tree": tree}
        for r, side in order(rounds):
            say(f"round {r}/{rounds}: {side} ({baseline if side == 'baseline' else tree})")
            json_path = os.path.join(tmp, f"{side}-{r}.json")
            with fresh_vhost(broker) as url:
                res = run_one(trees[side], bench_args(
                    side, nodes, requests, low_load, window, max_batch, durability, url,
                    backend, json_path, votes), json_path, timeout)
            res.update(side=side, round=r)
            if "failed" in res:
                say(f"  {side} round {r}: FAILED: {res['failed']}")
            else:
                say(f"  {side} round {r}: {res.get('tx_per_s')} tx/s, commit p50 "
                    f"{res.get('commit_p50_ms')} ms")
            results.append(res)
    out = summarize(results, rounds)
    out.update(baseline=baseline, nodes=nodes, requests=requests, low_load=low_load,
               durability=durability, votes=votes or "all-to-all", runs=results)
    tree_runs = [x for x in results if x["side"] == "tree" and "critical_path_ms" in x]
    if tree_runs:  # the tree's critical path of its median round (the baseline has none)
        tree_runs.sort(key=lambda x: x.get("commit_p50_ms") or 0)
        median = tree_runs[(len(tree_runs) - 1) // 2]
        out["critical_path_ms"] = median["critical_path_ms"]
        out["critical_path_commit_ms"] = median.get("critical_path_commit_ms")
    return out


__all__ = ["order", "summarize", "bench_args", "archive", "fresh_vhost", "run_ab", "vhost_url"]
