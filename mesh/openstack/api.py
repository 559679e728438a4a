"""``hdpbf api``: nova-api's two-step console reader over HTTP.

``GET /console/<instance>?host=<compute host>`` answers ``{"connect_info", "step"}``
through ``ConsoleReader`` (reader.py): step 1 the node's local ledger, step 2 the RPC to
compute.  ``GET /healthz`` reports the reader's counters.  Same rules as the other
commands (mesh/cli/__init__.py): bad input exits 2 with one ``Error:`` line.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click

from pbft_tasks.topology import ConfigError, MeshConfig

from ..clikit import BadInput, config_option, config_path, console
from . import rpc


@click.command("api")
@click.option("--node", "node_id", type=int, default=0, show_default=True,
              help="the mesh node whose local ledger step 1 reads")
@click.option("--reader", default=None, help="reader identity whose key opens sealed tokens")
@click.option("--bind", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8774, show_default=True)
@click.option("--timeout", type=click.FloatRange(0.01, None), default=5.0, show_default=True,
              help="step-2 RPC timeout in seconds")
@click.option("--transport-url", default=None, metavar="URL",
              help="oslo.messaging URL (default: the mesh's RabbitMQ as rabbit://)")
@click.option("--own-answers/--no-own-answers", default=True, show_default=True,
              help="serve this process's own step-2 answers (step \"1o\") until the "
                   "ledger has them; off: the ledger alone, the paper's design")
@config_option
def api(node_id: int, reader: str | None, bind: str, port: int, timeout: float,
        transport_url: str | None, own_answers: bool, config: str | None) -> None:
    """Serve nova-api's two-step get_vnc_console over HTTP:
    GET /console/<instance>?host=<compute host> -> {"connect_info", "step"}."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from pbft_tasks import metrics
    from pbft_tasks.topology import console_writers, load_reader_identity

    from ..ops.stack import redact
    from .reader import ConsoleReader, ConsoleUnavailable
    from .sealing import Opener
    path = config_path(config)
    cfg = MeshConfig.load(path)
    try:
        ledger = str(cfg.ledger_path(node_id))
        opener = Opener(reader, load_reader_identity(cfg, reader)) if reader else None
        url = transport_url or rpc.transport_url_from_broker(cfg.broker_url)
    except (ConfigError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    # One HTTP thread, one ConsoleReader: its sqlite connection belongs to that thread.
    console_reader = ConsoleReader(ledger, url, {}, opener, rpc_timeout=timeout,
                                   own_answers=own_answers, writers=console_writers(cfg))
    try:  # hdpbf_step1_answers_total etc. on $HDPBF_METRICS_PORT (pbft_tasks/metrics.py)
        metrics.export_reader(console_reader, node_id, metrics.reader_metrics_port())
    except ValueError as exc:
        raise BadInput(str(exc)) from None

    class Handler(BaseHTTPRequestHandler):
        server_version = "hdpbf-api/1"

        def _reply(self, code: int, obj: dict) -> None:
            body = json.dumps(obj, sort_keys=True).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            segs = parts.path.strip("/").split("/")
            query = parse_qs(parts.query)
            if parts.path == "/healthz":
                return self._reply(200, {"ok": True, "node": node_id, "reader": reader,
                                         "step1_hits": console_reader.step1_hits,
                                         "step1_own_answers": console_reader.step1_own_answers,
                                         "step2_calls": console_reader.step2_calls})
            if len(segs) != 2 or segs[0] != "console" or not segs[1]:
                return self._reply(404, {"error": "GET /console/<instance>?host=<compute host>"})
            instance = unquote(segs[1])
            host = query.get("host", [None])[0]
            if host:
                console_reader.hosts[instance] = host
            elif instance not in console_reader.hosts:
                return self._reply(400, {"error": f"no compute host known for {instance!r}: "
                                                  f"pass ?host=<compute host>"})
            t0 = time.perf_counter()
            try:
                info, step = console_reader.get_vnc_console(
                    instance, query.get("type", ["novnc"])[0])
            except ConsoleUnavailable as exc:
                return self._reply(503, {"error": str(exc), "instance": instance})
            self._reply(200, {"instance": instance, "node": node_id, "step": step,
                              "connect_info": info,
                              "ms": round((time.perf_counter() - t0) * 1000, 3)})

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} "
                             f"{fmt % args}\n")

    try:
        server = HTTPServer((bind, port), Handler)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {bind}:{port}: {exc}") from None

    def stop(*_: Any) -> None:
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    console().print(f"nova-api reader on http://{bind}:{port}/console/<instance>?host=<host>: "
                    f"step 1 node {node_id}'s ledger, step 2 RPC via {redact(url)}; reader "
                    f"{reader or '(none)'}", soft_wrap=True, markup=False)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        console_reader.close()


__all__ = ["api"]
