"""A benchmark never dies with a traceback (mesh/bench/missing.py): a figure it cannot
have is reported missing, with the reason, in the printout and the JSON, and the rest of
the run is kept.

The counter source here is a stand-in for RabbitMQ's management API, served over HTTP
by the test: it answers every request, but its counters stop moving after a given
number of marks, as a plugin that no longer aggregates would (``hdpbf bench paper
--count-messages`` once ended in ``TimeoutError: RabbitMQ's counters did not catch up``
after every round had run).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import pytest
from click.testing import CliRunner

from mesh.bench import broker_counts, paper
from mesh.bench.missing import BenchGroup, Missing


class StuckCounters:
    """A management API whose marker is counted for the first ``settles`` marks only."""

    def __init__(self, settles: int = 0):
        self.settles, self.published = settles, 0
        counters = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: object = None) -> None:
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                seen = min(counters.published, counters.settles)
                self._reply(200, [{"name": broker_counts.MARKER,
                                   "message_stats": {"publish": seen}},
                                  {"name": "node.0", "message_stats": {"publish": 10 * seen}}])

            def do_PUT(self):
                self._reply(204)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                counters.published += 1
                self._reply(200, {"routed": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://guest:guest@127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def quick_settle(monkeypatch):
    monkeypatch.setattr(broker_counts, "SETTLE_TIMEOUT", 0.3)
    monkeypatch.setattr(broker_counts, "SETTLE_AFTER", 0.0)


def test_a_tally_whose_counters_never_settle_stops_and_says_why(quick_settle):
    api = StuckCounters(settles=2)
    try:
        tally = broker_counts.Tally(broker_counts.RabbitCounters(api.url))
        assert tally.mark() is None and tally.ok            # the first mark: a start
        assert tally.mark() == {"rpc": 0, "consensus": 10, "other": 0, "total": 10}
        assert tally.mark() is None and not tally.ok        # stuck from here
        assert tally.error == "TimeoutError: RabbitMQ's counters did not catch up in 0.3s"
        assert tally.mark() is None                         # and stays stopped
    finally:
        api.close()


@pytest.mark.parametrize("settles, missing", [
    (0, {"broker_messages", "broker_messages_per_1000_steady"}),  # stuck from the start
    (4, {"broker_messages_per_1000_steady"}),                     # stuck after the runs
])
def test_the_paper_bench_keeps_its_run_when_the_counters_stop(tmp_path, quick_settle,
                                                              settles, missing):
    api = StuckCounters(settles=settles)
    try:
        # the embedded rig with a counter source: every round runs, then the counts fail
        result = paper.run(repeat=1, embedded=True, nova=False, only=("rpc", "hdpbf"),
                           rabbit_api=api.url, steady_rounds=1, progress=False,
                           data_dir=str(tmp_path / "m"))
    finally:
        api.close()
    assert set(result["missing"]) == missing
    assert all("did not catch up" in why for why in result["missing"].values())
    for c in ("rpc", "hdpbf"):                                  # the rest is kept
        r = result["configs"][c]
        assert r["mean_ms"] > 0 and r["step1"] + r["own_answers"] + r["step2"] == 100
        assert r["broker_messages_per_1000_steady"] is None
        assert (r["broker_messages"] is None) == ("broker_messages" in missing)
    assert result["stale_answers"] == 0
    lines: list[str] = []

    class Console:
        def print(self, *args, **kw):
            lines.append(" ".join(str(a) for a in args))
    paper.report(result, Console())
    assert any(line.startswith("[yellow]missing: broker_messages_per_1000_steady (Timeout")
               for line in lines), lines


def test_a_run_the_world_stops_is_one_line_of_error_not_a_traceback():
    @click.group(cls=BenchGroup)
    def bench():
        pass

    @bench.command()
    def stopped():
        raise ConnectionRefusedError(111, "Connection refused")

    res = CliRunner().invoke(bench, ["stopped"])
    assert res.exit_code == 1 and res.exception.__class__ is SystemExit
    assert res.output == ("Error: the benchmark could not go on: ConnectionRefusedError: "
                          "[Errno 111] Connection refused\n")


def test_our_own_bug_is_not_a_missing_figure():
    missing = Missing()
    with pytest.raises(KeyError):
        with missing.guard("x"):
            {}["nope"]
    with missing.guard("y"):
        raise TimeoutError("no answer in 5 s")
    assert missing == {"y": "TimeoutError: no answer in 5 s"}
