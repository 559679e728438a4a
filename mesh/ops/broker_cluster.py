"""A RabbitMQ cluster of N nodes on this machine, for tests, benches and a first try.

Owns: starting, joining, killing, restarting and tearing down local RabbitMQ nodes
``c1@localhost`` .. ``cN@localhost`` that share nothing with the machine's own RabbitMQ
(``rabbit@localhost`` on 5672, which others depend on and which is never touched here)
except the Erlang installation and the system Erlang cookie.

Rules of this file:
- Node i (1-based) listens on AMQP ``base_port + i - 1`` (default 5681..) and Erlang
  distribution ``dist_base + i - 1`` (default 25681..), on 127.0.0.1 only; management
  and every other plugin are off (its own ``enabled_plugins`` file with ``[].``).
- Everything a node writes is under ``DIR/c<i>/`` (mnesia, logs, config, pid file),
  owned by the ``rabbitmq`` user: the server runs as that user (through ``runuser``
  when we are root) with ``HOME=/var/lib/rabbitmq`` for the shared cookie.  The
  system ``rabbitmq-env.conf`` and ``rabbitmq.conf`` are replaced by the node's own
  (the system one pins ``NODENAME`` and port 5672).
- ``cluster_partition_handling = pause_minority``: a node that cannot see a majority
  stops serving, so a minority never accepts work it cannot replicate (the quorum queues
  refuse it anyway; this closes the node's classic queues and connections too).
- Nodes are found and stopped by their own pid file and node name only, never by a
  process name: ``down`` leaves every other RabbitMQ alone.
- ``DIR/cluster.json`` records the layout (names, ports, URLs), so ``down`` and the
  test fixtures need only DIR.
"""
from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import psutil

RABBITMQ_USER = "rabbitmq"
RABBITMQ_HOME = "/var/lib/rabbitmq"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
STATE_FILE = "cluster.json"
DEFAULT_BASE_PORT = 5681
DEFAULT_DIST_BASE = 25681


class ClusterError(RuntimeError):
    """The cluster could not be started, joined or stopped; the message says why."""


@dataclass
class BrokerNode:
    index: int
    name: str
    port: int
    dist_port: int
    dir: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def pid_file(self) -> Path:
        return Path(self.dir) / "pid"


@dataclass
class BrokerCluster:
    dir: str
    nodes: list[BrokerNode] = field(default_factory=list)

    # -- layout --------------------------------------------------------------------
    @classmethod
    def plan(cls, dir: str | os.PathLike, n: int = 3, base_port: int = DEFAULT_BASE_PORT,
             dist_base: int = DEFAULT_DIST_BASE, prefix: str = "c") -> "BrokerCluster":
        """The layout of N nodes ``<prefix>1@localhost``..; tests give a prefix of their
        own so that two test sessions never share a node name."""
        if type(n) is not int or n < 1:
            raise ClusterError(f"--nodes must be a positive integer, got {n!r}")
        d = Path(dir).absolute()
        nodes = [BrokerNode(i, f"{prefix}{i}@localhost", base_port + i - 1, dist_base + i - 1,
                            str(d / f"c{i}")) for i in range(1, n + 1)]
        return cls(str(d), nodes)

    @classmethod
    def plan_free(cls, dir: str | os.PathLike, n: int = 3, prefix: str = "c") -> "BrokerCluster":
        """``plan`` on the first block of free ports from the defaults up (tests and
        benches: another cluster may already hold 5681..)."""
        for k in range(0, 300, n):
            base, dist = DEFAULT_BASE_PORT + k, DEFAULT_DIST_BASE + k
            if all(_port_free(p) for i in range(n) for p in (base + i, dist + i)):
                return cls.plan(dir, n, base, dist, prefix)
        raise ClusterError(f"no {n} free consecutive ports from {DEFAULT_BASE_PORT} up")

    @classmethod
    def load(cls, dir: str | os.PathLike) -> "BrokerCluster":
        path = Path(dir).absolute() / STATE_FILE
        try:
            obj = json.loads(path.read_text())
            return cls(obj["dir"], [BrokerNode(**n) for n in obj["nodes"]])
        except FileNotFoundError:
            raise ClusterError(f"no broker cluster in {dir} ({path} is missing)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"{path} is not a cluster record: {exc}") from None

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        path.write_text(json.dumps({"dir": self.dir, "urls": self.urls,
                                    "nodes": [asdict(n) for n in self.nodes]}, indent=2) + "\n")

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def broker_url(self) -> str:
        """All nodes as one kombu failover URL (``;``-separated)."""
        return ";".join(self.urls)

    def node(self, which: int | str) -> BrokerNode:
        for n in self.nodes:
            if which in (n.index, n.name):
                return n
        raise ClusterError(f"no broker node {which!r} in {self.dir}")

    # -- processes -----------------------------------------------------------------
    def _env(self, node: BrokerNode) -> dict[str, str]:
        d = Path(node.dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update({
            "HOME": RABBITMQ_HOME,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def _as_rabbitmq(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", RABBITMQ_USER, "--", *argv]
        if pwd.getpwuid(os.geteuid()).pw_name != RABBITMQ_USER:
            raise ClusterError("starting RabbitMQ nodes needs root or the rabbitmq user")
        return argv

    def ctl(self, node: BrokerNode, *args: str, timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n <node> ARGS`` (as the rabbitmq user, with the node's env)."""
        argv = self._as_rabbitmq([RABBITMQCTL, "-n", node.name, *args])
        try:
            res = subprocess.run(argv, env=self._env(node), capture_output=True, text=True,
                                 timeout=timeout, cwd=RABBITMQ_HOME)
        except subprocess.TimeoutExpired:  # a loaded machine: callers that poll try again
            res = subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f}s")
        if check and res.returncode != 0:
            raise ClusterError(f"rabbitmqctl -n {node.name} {' '.join(args)} failed "
                               f"({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
        return res

    def _lay_out(self, node: BrokerNode) -> None:
        d = Path(node.dir)
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.port}\n"
            "loopback_users = none\n"
            "cluster_partition_handling = pause_minority\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
            "log.file.level = info\n")
        (d / "advanced.config").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("# own env file: the system one pins NODENAME\n")
        (d / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam(RABBITMQ_USER)
            for path in [d, *d.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start_node(self, node: BrokerNode) -> None:
        """Start one node detached (its data is kept: a restarted member rejoins)."""
        self._lay_out(node)
        argv = self._as_rabbitmq([RABBITMQ_SERVER, "-detached"])
        log = open(Path(node.dir) / "log" / "startup.log", "ab")
        try:
            subprocess.run(argv, env=self._env(node), stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=60, check=True, cwd=RABBITMQ_HOME)
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"rabbitmq-server for {node.name} exited {exc.returncode}; "
                               f"see {node.dir}/log") from None
        finally:
            log.close()

    def await_node(self, node: BrokerNode, timeout: float = 90.0) -> None:
        """Wait until the node runs (its pid file names its VM) and has booted."""
        deadline = time.monotonic() + timeout
        while self.pid(node) is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} did not start within {timeout:.0f}s; "
                                   f"see {node.dir}/log")
            time.sleep(0.2)
        left = max(5, int(deadline - time.monotonic()))
        res = self.ctl(node, "await_startup", "--timeout", str(left), timeout=left + 15,
                       check=False)
        if res.returncode != 0:
            raise ClusterError(f"{node.name} did not boot within {timeout:.0f}s: "
                               f"{res.stderr.strip() or res.stdout.strip()}; see {node.dir}/log")

    def pid(self, node: BrokerNode) -> int | None:
        """The node's OS pid, if it is running (from its pid file, checked against the
        process table)."""
        try:
            pid = int(node.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            cmdline, environ = proc.cmdline(), proc.environ()
        except psutil.Error:
            return None
        # The node name is not in the VM's argv (rabbitmq-server passes it through the
        # environment): the pid is this node's VM only with this node's name and data.
        mine = (environ.get("RABBITMQ_NODENAME") == node.name
                and environ.get("RABBITMQ_MNESIA_BASE") == f"{node.dir}/mnesia")
        return pid if mine and any("beam" in a for a in cmdline) else None

    def kill_node(self, which: int | str, sig: int = signal.SIGKILL) -> None:
        """Kill one node's Erlang VM (kill -9 by default), as a crash would."""
        node = self.node(which)
        pid = self.pid(node)
        if pid is None:
            raise ClusterError(f"{node.name} is not running")
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while self.pid(node) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop_node(self, which: int | str) -> None:
        """Stop one node cleanly (``rabbitmqctl stop``)."""
        node = self.node(which)
        if self.pid(node) is not None:
            self.ctl(node, "stop", timeout=90)

    def restart_node(self, which: int | str, wait: bool = True, timeout: float = 90.0) -> None:
        """Start a stopped or killed member again; it rejoins the cluster by itself.  A
        node that went down first boots only once a node that outlived it is back
        (Mnesia waits for it), so under pause_minority that can take a while."""
        node = self.node(which)
        self.start_node(node)
        if wait:
            self.await_node(node, timeout)

    def running(self) -> list[BrokerNode]:
        return [n for n in self.nodes if self.pid(n) is not None]

    # -- whole cluster ---------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> None:
        """Start every node, join 2..N to node 1, and check all are members."""
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)  # the rabbitmq user must reach DIR/c<i>
        self.save()
        for node in self.nodes:
            if self.pid(node) is not None:
                raise ClusterError(f"{node.name} is already running (pid file {node.pid_file})")
            self.start_node(node)
        for node in self.nodes:
            self.await_node(node, timeout)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app", timeout=timeout)
        self.wait_members(len(self.nodes), timeout)

    def wait_members(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        node = self.running()[0] if self.running() else self.nodes[0]
        running: list[str] = []
        while time.monotonic() < deadline:
            res = self.ctl(node, "cluster_status", "--formatter", "json", check=False)
            if res.returncode == 0:
                try:
                    running = json.loads(res.stdout).get("running_nodes", [])
                except ValueError:
                    running = []
                if len(running) >= count:
                    return
            time.sleep(0.5)
        raise ClusterError(f"only {running} of {count} broker nodes joined within {timeout:.0f}s")

    def down(self, remove: bool = True) -> None:
        """Kill every node of this cluster (by pid file), then remove its data."""
        for node in self.nodes:
            pid = self.pid(node)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        while any(self.pid(n) is not None for n in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        if remove:
            for node in self.nodes:
                shutil.rmtree(node.dir, ignore_errors=True)
            (Path(self.dir) / STATE_FILE).unlink(missing_ok=True)

    def queue_leader(self, queue: str, vhost: str = "/") -> str | None:
        """The node leading quorum queue ``queue`` now (asked of any running node)."""
        for node in self.running():
            res = self.ctl(node, "list_queues", "-p", vhost, "name", "leader", "--formatter",
                           "json", check=False, timeout=30)
            if res.returncode != 0:
                continue
            try:
                rows = json.loads(res.stdout)
            except ValueError:
                continue
            for row in rows:
                if row.get("name") == queue:
                    return row.get("leader") or None
            return None
        return None

    def add_vhost(self, vhost: str) -> None:
        node = self.running()[0]
        self.ctl(node, "add_vhost", vhost)
        self.ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# -- command line ---------------------------------------------------------------------

@click.group(name="broker-cluster")
def broker_cluster() -> None:
    """A local RabbitMQ cluster (c1@localhost..) for trying quorum queues and failover."""


@broker_cluster.command()
@click.option("--nodes", "n", type=int, default=3, show_default=True)
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False))
@click.option("--base-port", type=int, default=DEFAULT_BASE_PORT, show_default=True,
              help="AMQP port of node 1; node i listens on base-port + i - 1.")
@click.option("--dist-base", type=int, default=DEFAULT_DIST_BASE, show_default=True,
              help="Erlang distribution port of node 1.")
def up(n: int, dir_: str, base_port: int, dist_base: int) -> None:
    """Start N RabbitMQ nodes on local ports and join them into one cluster."""
    try:
        cluster = BrokerCluster.plan(dir_, n, base_port, dist_base)
        t0 = time.monotonic()
        cluster.up()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{n} broker nodes up in {time.monotonic() - t0:.1f}s; record {dir_}/{STATE_FILE}")
    click.echo("a mesh on it (mesh.json \"broker_url\": the list, \"queue_type\": \"quorum\"):")
    click.echo(f"  hdpbf init --dir MESH_DIR --queue-type quorum --broker {shlex.quote(cluster.broker_url)}")


@broker_cluster.command()
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False))
@click.option("--keep-data", is_flag=True, help="Leave the nodes' data directories.")
def down(dir_: str, keep_data: bool) -> None:
    """Kill the nodes recorded in DIR/cluster.json and remove their data."""
    try:
        cluster = BrokerCluster.load(dir_)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    cluster.down(remove=not keep_data)
    click.echo(f"{len(cluster.nodes)} broker nodes down")
