"""The pure parts of ``hdpbf bench consensus --baseline REV`` (mesh/bench/ab.py): the
order of the runs, the medians and ratios, the JSON's shape, the flags a run gets.
The runs themselves are in tests/integration/test_bench_ab.py."""
from __future__ import annotations

import subprocess

import pytest

from mesh.bench import ab


def test_rounds_alternate_which_side_runs_first():
    assert ab.order(3) == [(1, "baseline"), (1, "tree"), (2, "tree"), (2, "baseline"),
                           (3, "baseline"), (3, "tree")]
    assert ab.order(1) == [(1, "baseline"), (1, "tree")]


def _run(side, r, tx, p50):
    return {"side": side, "round": r, "tx_per_s": tx, "commit_p50_ms": p50}


def test_medians_ratios_and_per_round_lists():
    results = [_run("baseline", 1, 100.0, 20.0), _run("tree", 1, 120.0, 10.0),
               _run("tree", 2, 90.0, 30.0), _run("baseline", 2, 300.0, 18.0),
               _run("baseline", 3, 200.0, 22.0), _run("tree", 3, 150.0, 11.0)]
    out = ab.summarize(results, 3)
    assert out["baseline_tx_per_s"] == 200.0 and out["tx_per_s"] == 120.0
    assert out["baseline_commit_p50_ms"] == 20.0 and out["commit_p50_ms"] == 11.0
    assert out["tx_per_s_ratio"] == 0.6 and out["commit_p50_ratio"] == 0.55
    assert out["baseline_tx_per_s_rounds"] == [100.0, 300.0, 200.0]
    assert out["tx_per_s_rounds"] == [120.0, 90.0, 150.0]
    assert out["baseline_commit_p50_ms_rounds"] == [20.0, 18.0, 22.0]
    assert out["commit_p50_ms_rounds"] == [10.0, 30.0, 11.0]
    assert out["missing"] == {} and out["rounds"] == 3


def test_a_failed_round_is_missing_and_the_median_is_over_the_rest():
    results = [_run("baseline", 1, 100.0, 20.0), {"side": "tree", "round": 1, "failed": "exit 1"},
               _run("tree", 2, 90.0, 30.0), _run("baseline", 2, 300.0, 18.0)]
    out = ab.summarize(results, 2)
    assert out["tx_per_s_rounds"] == [None, 90.0] and out["tx_per_s"] == 90.0
    assert out["baseline_tx_per_s"] == 200.0
    assert out["missing"] == {"tree round 1": "exit 1"}


def test_a_side_with_no_round_has_no_median_and_no_ratio():
    out = ab.summarize([_run("baseline", 1, 100.0, 20.0),
                        {"side": "tree", "round": 1, "failed": "exit 1"}], 1)
    assert out["tx_per_s"] is None and out["tx_per_s_ratio"] is None
    assert out["commit_p50_ratio"] is None and "tree medians" in out["missing"]


def test_the_baseline_gets_only_flags_every_bench_knows():
    base = ab.bench_args("baseline", 4, 500, 20, 100, 256, "full", "amqp://h/v", None,
                         "/tmp/x.json", votes="collector")
    assert "--votes" not in base and "--backend" not in base
    assert base[:2] == ["bench", "consensus"] and base[base.index("--nodes") + 1] == "4"
    tree = ab.bench_args("tree", 4, 500, 20, 100, 256, "full", "amqp://h/v", "redis://r/1",
                         "/tmp/x.json", votes="collector")
    assert tree[tree.index("--votes") + 1] == "collector"
    assert tree[tree.index("--backend") + 1] == "redis://r/1"


def test_a_vhost_replaces_the_broker_urls_path():
    assert ab.vhost_url("amqp://guest:guest@127.0.0.1:5672//", "hdpbf-ab-1") == \
        "amqp://guest:guest@127.0.0.1:5672/hdpbf-ab-1"


def test_archive_unpacks_the_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (repo / "a.txt").write_text("one\n")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    (repo / "a.txt").write_text("two\n")  # the working tree differs from the commit
    out = tmp_path / "out"
    out.mkdir()
    tree = ab.archive("HEAD", repo, out)
    assert (tree / "a.txt").read_text() == "one\n"
    with pytest.raises(ValueError, match="no-such-rev"):
        ab.archive("no-such-rev", repo, out)


def test_baseline_takes_one_configuration_only():
    from click.testing import CliRunner

    from mesh.cli import main
    for extra in (["--nodes", "4,7"], ["--votes", "both"], ["--followers", "2"]):
        res = CliRunner().invoke(main, ["bench", "consensus", "--baseline", "HEAD", *extra])
        assert res.exit_code == 2 and "--baseline compares one configuration" in res.output, extra
