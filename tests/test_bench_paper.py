"""``hdpbf bench paper``: the paper's experiment runs end to end and reports honestly.

The embedded run (one process, no broker) is fast and runs everywhere; the broker run
starts real workers and compute processes on the local RabbitMQ (a private vhost) and
Redis.  Both check the JSON's shape, the step counts of the two-step read (with own
answers, ``hdpbf``, and from the ledger alone, ``hdpbf-ledger``), that no answer was
stale (own answers included), and that the plot is a PNG.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mesh.bench.paper import CallRecord, check_answers
from mesh.cli import main
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG_FIELDS = ("mean_ms", "p50_ms", "p99_ms", "total_s", "step1", "own_answers", "step2")
TWO_STEP = ("hdpbf", "hdpbf-ledger")


def _check_result(out: dict, png, configs: tuple[str, ...]) -> None:
    assert set(out["configs"]) == set(configs)
    for name in configs:
        c = out["configs"][name]
        for key in CONFIG_FIELDS:
            assert isinstance(c[key], (int, float)), (name, key)
        assert c["step1"] + c["own_answers"] + c["step2"] == 100, (name, c)
        if name not in TWO_STEP:
            assert c["own_answers"] == 0, (name, c)
        assert 0 < c["p50_ms"] <= c["p99_ms"]
        # total_s is reported to 0.1 ms, so allow that rounding on short runs
        assert c["total_s"] == pytest.approx(c["mean_ms"] * 100 / 1000, rel=1e-3, abs=1e-4)
    assert out["configs"]["rpc"]["step2"] == 100          # the baseline never answers locally
    for name in TWO_STEP:
        hd = out["configs"][name]
        assert hd["step2"] >= 6                             # every instance's first call
        assert hd["step2_at_first_calls"] == 6
    assert out["hdpbf_step2_at_first_calls"] == 6
    for name in TWO_STEP:  # how soon the ledger answered, once per ledger-reading configuration
        lag = out["configs"][name]["ledger_first_answer_p50_ms"]
        assert lag == out["ledger_first_answer_p50_ms"][name]
        assert lag == out["configs"][name]["first_ledger_answer_after_ms"]["p50"]
    assert out["configs"]["hdpbf-ledger"]["own_answers"] == 0    # the switch is off there
    assert out["stale_answers"] == 0 and out["stale_own_answers"] == 0
    assert all(c["stale"] == 0 for c in out["configs"].values())
    calls = out["calls"]
    assert {c["step"] for c in calls} <= {1, "1o", 2}
    for c in calls:
        if c["step"] == "1o":
            assert c["config"] == "hdpbf", c
    for name in configs:
        mine = [c for c in calls if c["config"] == name]
        assert [c["call"] for c in mine] == list(range(1, 101))
        assert set(mine[0]) == {"config", "repeat", "call", "instance", "ms", "step"}
        assert [c["instance"] for c in mine[:8]] == [1, 1, 1, 1, 1, 1, 1, 2]
    assert out["step1_p50_us"] > 0
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


@pytest.mark.broker
def test_embedded_run_through_the_cli(tmp_path, backend_url):
    js, png = tmp_path / "paper.json", tmp_path / "paper.png"
    res = CliRunner().invoke(main, ["bench", "paper", "--embedded", "--repeat", "1",
                                    "--redis-url", backend_url,
                                    "--json", str(js), "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "EMBEDDED (no broker)" in res.output and "stale_answers = 0" in res.output
    out = json.loads(js.read_text())
    assert out["mode"] == "embedded" and "EMBEDDED" in out["label"]
    assert out["compute"] == "threads"
    assert set(out["skipped"]) == {"nova"}  # the nova configurations need the broker rig
    _check_result(out, png, ("rpc", "redis", *TWO_STEP))


def test_without_redis_its_configuration_is_skipped_with_the_reason(tmp_path):
    js, png = tmp_path / "paper.json", tmp_path / "paper.png"
    res = CliRunner().invoke(main, ["bench", "paper", "--embedded", "--repeat", "1",
                                    "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                                    "--json", str(js), "--png", str(png)])
    assert res.exit_code == 0, res.output
    out = json.loads(js.read_text())
    assert "Connection" in out["skipped"]["redis"], out["skipped"]
    assert "redis configuration skipped" in res.output
    _check_result(out, png, ("rpc", *TWO_STEP))                  # the rest is kept


def _record(answer, t_end, instance="i-1", step=1):
    return CallRecord("hdpbf", 1, 1, 1, 0.01, step, instance, t_end - 0.001, t_end, answer)


def test_an_answer_no_live_token_matches_is_stale():
    a, b = {"token": "A"}, {"token": "B"}
    served = [{"instance": "i-1", "connect_info": a, "time": 100.0, "expires_at": 110.0},
              {"instance": "i-1", "connect_info": b, "time": 105.0, "expires_at": 115.0}]
    checks = check_answers([_record(a, 104.0),        # newest live token: fine
                            _record(a, 106.0),        # A still live, B newer: older_token
                            _record(a, 111.0),        # A expired: stale
                            _record(b, 104.0),        # B not served yet: stale
                            _record({"token": "X"}, 106.0),           # never served: stale
                            _record(a, 104.0, instance="i-2"),        # other instance: stale
                            _record(b, 106.0, step="1o"),             # own answer, live: fine
                            _record(a, 112.0, step="1o")], served)    # own answer, dead: stale
    assert checks["hdpbf"] == {"stale": 5, "stale_own": 1, "older_token": 1}


def test_ledger_first_answer_p50_is_the_median_wait_for_the_first_ledger_answer():
    from mesh.bench.paper_report import summarize
    from mesh.bench.workload import paper_sequence

    def rec(config, call, instance, step, t):
        return CallRecord(config, 1, call, instance, 1.0, step, f"i-{instance}", t, t)
    # instance 1: RPC at 10 s, ledger at 10.020 s; instance 2: RPC at 20, ledger at 20.040;
    # instance 3: RPC at 30, then another RPC, the ledger at 30.100
    records = [rec("hdpbf", 1, 1, 2, 10.0), rec("hdpbf", 2, 1, 1, 10.020),
               rec("hdpbf", 3, 2, 2, 20.0), rec("hdpbf", 4, 2, 1, 20.040),
               rec("hdpbf", 5, 3, 2, 30.0), rec("hdpbf", 6, 3, 2, 30.050),
               rec("hdpbf", 7, 3, 1, 30.100)]
    out = summarize(records, [], ["hdpbf"], paper_sequence())
    assert out["configs"]["hdpbf"]["ledger_first_answer_p50_ms"] == pytest.approx(40.0)
    assert out["ledger_first_answer_p50_ms"] == {"hdpbf": pytest.approx(40.0)}


# -- the real broker ---------------------------------------------------------------------

@pytest.mark.broker
@pytest.mark.slow
def test_broker_run_through_the_cli(tmp_path, private_vhost):
    js, png = tmp_path / "paper.json", tmp_path / "paper.png"
    # --no-nova: nova is imported only in processes of its own (tests/nova_driver)
    res = CliRunner().invoke(main, ["bench", "paper", "--repeat", "1", "--broker", private_vhost,
                                    "--no-nova", "--json", str(js), "--png", str(png),
                                    "--data-dir", str(tmp_path / "mesh")])
    assert res.exit_code == 0, res.output
    out = json.loads(js.read_text())
    assert out["mode"] == "broker" and out["compute"] == "processes"
    assert out["skipped"] == {}
    _check_result(out, png, ("rpc", "redis", *TWO_STEP))
    assert out["redis_get_p50_us"] > 0
    # The cache is written before the next call, so it misses exactly once per instance;
    # so are own answers: kept before the call returns, served from the next call on.
    assert out["configs"]["redis"]["step2"] == 6
    assert out["configs"]["hdpbf"]["step2"] == 6
    # How many calls the ledger answers depends on how fast consensus commits compared
    # with back-to-back calls (a figure, not asserted).  With own answers on, a run whose
    # first commits come after its last calls has none: a race with consensus, so only
    # the configuration without own answers must show ledger answers (same reader);
    # every other call of hdpbf is local (_check_result: step1 + own answers + step2).
    assert out["configs"]["hdpbf-ledger"]["step1"] > 0


# -- nova's own client ----------------------------------------------------------------------

NOVA_FIELDS = ("mean_ms", "p50_ms", "step1", "own_answers", "step2", "broker_messages",
               "broker_messages_per_1000_steady")


@pytest.mark.broker
@pytest.mark.slow
def test_nova_configurations_through_novas_own_client(tmp_path):
    """``--only nova-rpc --only nova-hdpbf --count-messages``: nova 34's ComputeAPI on
    rabbit:// and on hdpbf+rabbit://, counted by a private RabbitMQ's management API (the
    shared broker has none).  In a process of its own: nova is never imported here."""
    js = tmp_path / "nova.json"
    cmd = [sys.executable, "-c", "from mesh.cli import main; main()", "bench", "paper",
           "--repeat", "1", "--only", "nova-rpc", "--only", "nova-hdpbf", "--count-messages",
           "--steady-rounds", "1", "--floor-calls", "200", "--json", str(js),
           "--png", str(tmp_path / "nova.png"), "--data-dir", str(tmp_path / "mesh")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    out = json.loads(js.read_text())
    assert out["skipped"] == {} and set(out["configs"]) == {"nova-rpc", "nova-hdpbf"}
    rpc, hd = out["configs"]["nova-rpc"], out["configs"]["nova-hdpbf"]
    for c in (rpc, hd):
        assert all(c[k] is not None for k in NOVA_FIELDS), c
        assert c["p50_ms"] > 0 and c["mean_ms"] > 0
    assert (rpc["step1"], rpc["own_answers"], rpc["step2"]) == (0, 0, 100)
    # Only each instance's first call goes to compute.  Each call through nova's client
    # costs a millisecond or more, so 100 of them outlast the first commits: the ledger
    # answers some (unlike the stand-in's microsecond own answers, test above).
    assert hd["step2"] == hd["step2_at_first_calls"] == 6
    assert hd["step1"] > 0 and hd["step1"] + hd["own_answers"] == 94
    assert out["stale_answers"] == 0
    assert out["driver_step1_p50_us"] > 0                 # a step-1 call inside the driver
    # RabbitMQ's own counters: a plain call is two RPC messages; hdpbf sends only the six
    # first calls over RPC, and at steady state nothing.  The mesh runs beside both
    # configurations, so both count its idle statuses (n - 1 per node a second) as
    # consensus; only hdpbf's adds the commits of its six records.
    assert rpc["broker_messages"]["rpc"] == 200
    assert rpc["broker_messages"]["consensus"] < hd["broker_messages"]["consensus"]
    assert hd["broker_messages"]["rpc"] == 12 and hd["broker_messages"]["consensus"] > 0
    assert rpc["broker_messages_per_1000_steady"]["rpc"] == 2000
    assert hd["broker_messages_per_1000_steady"]["rpc"] == 0
    # at steady state hdpbf routes nothing but the mesh's own idle statuses (consensus,
    # n - 1 per node a second, which the plain RPC configuration's mesh sends too)
    hd_steady, rpc_steady = hd["broker_messages_per_1000_steady"], rpc["broker_messages_per_1000_steady"]
    assert hd_steady["total"] == hd_steady["consensus"] < rpc_steady["total"]
    # nova's client-side floor and its serializer part are figures: present, positive,
    # and the percentages derived from them as printed (which is smaller than which is
    # the benchmark's to show, not a test's to assert: two timings taken on a loaded
    # machine can come out either way)
    assert out["nova_serialize_ms"] > 0 and out["nova_client_floor_ms"] > 0
    assert out["nova_client_floor_vs_nova_rpc_pct"] == pytest.approx(
        100 * out["nova_client_floor_ms"] / rpc["mean_ms"], abs=0.01)
    assert out["nova_hdpbf_best_pct"] > 0
    assert out["nova_instance_fields"] >= 50               # what nova-api loads, not 6
    assert f"{out['nova_client_floor_ms']:.3f} ms = " in proc.stdout.replace("\n", " ")


def test_a_skip_reason_is_printed_as_written_not_as_markup():
    """The nova skip reason tells the user to ``pip install -e '.[test]'``; rich took
    ``[test]`` for a style tag and printed ``pip install -e '.'``."""
    from rich.console import Console

    from mesh.bench.paper_report import report_skipped
    out = Console(record=True, width=200, highlight=False)
    why = "nova cannot be imported (No module named 'nova'); pip install -e '.[test]'"
    report_skipped({"skipped": {"nova": why}}, out)
    assert why in out.export_text()
