"""``hdpbf bench consensus --baseline REV`` on a tiny run: both sides run, each on a
vhost of its own that is gone afterwards, and the JSON carries the figures of both.
Speed is not asserted (the machine is shared); mesh/bench/ab.py's pure parts are in
tests/test_bench_ab.py."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mesh.bench import ab
from mesh.cli import main
from tests.services import try_rabbitmqctl

pytestmark = pytest.mark.broker


def test_ab_runs_both_sides_on_fresh_vhosts(tmp_path, backend_url):
    out = tmp_path / "ab.json"
    res = CliRunner().invoke(main, ["bench", "consensus", "--baseline", "HEAD", "--rounds", "1",
                                    "--requests", "100", "--low-load", "10", "--window", "50",
                                    "--backend", backend_url, "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["missing"] == {}, r["missing"]
    assert r["order"] == ["baseline #1", "tree #1"]
    for key in ("baseline_tx_per_s", "tx_per_s", "baseline_commit_p50_ms", "commit_p50_ms"):
        assert r[key] > 0
    assert r["tx_per_s_ratio"] == round(r["tx_per_s"] / r["baseline_tx_per_s"], 3)
    assert r["commit_p50_ratio"] == round(r["commit_p50_ms"] / r["baseline_commit_p50_ms"], 3)
    assert [x["side"] for x in r["runs"]] == ["baseline", "tree"]
    assert all(x["identical_heads"] for x in r["runs"])
    # this tree's bench follows the median commit hop by hop
    assert r["critical_path_ms"][0]["hop"] == "client -> node 0: Request"
    assert "A/B" in res.output and "hop by hop" in res.output
    left = (try_rabbitmqctl("list_vhosts", "-q", "name") or "").split()
    assert not [v for v in left if v.startswith(ab.VHOST_PREFIX)]
