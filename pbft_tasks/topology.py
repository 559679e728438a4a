"""The mesh's configuration: who the replicas and clients are, their keys, where the broker
is, and the protocol's tuning knobs.

Owns: ``mesh.json`` (its schema, strict loading, atomic saving), the key directory that
``hdpbf init`` lays out, loading a node's or client's own private key and checking it
against the public key everyone else knows it by, and the ``HDPBF_*`` environment.

Rules of this file:
- Replicas are numbered 0..n-1 (the primary of view v is v mod n, Castro-Liskov 1999
  sec. 4.1) and n >= 4 = 3f+1 with f >= 1.  No two replicas share a public key: one key
  behind two ids would count twice towards a 2f+1 quorum.
- Loading never trusts the file: a wrong type, a duplicate, an unknown key or a broken
  protocol rule raises ConfigError naming the field and what it should be.  The same
  checks run when a MeshConfig is built in code.
- Layout written by ``init_mesh(DIR)``: ``DIR/mesh.json``, ``DIR/keys/`` (mode 0700) with
  ``node<id>.key`` and ``client-<name>.key`` (mode 0600), and ``data_dir`` = ``DIR/data``
  with one ``node<id>/`` per replica.  In the file, a ``data_dir`` inside DIR is written
  relative to DIR, so the directory can be moved or mounted elsewhere as a whole; in
  memory, after ``load``, ``data_dir`` is always absolute.
- mesh.json holds only public keys, but the broker and backend URLs may carry passwords;
  when they do the file is written 0600, else 0644.
- Brokers (mesh/ops/broker_cluster.py, docs/operations/broker-cluster.md): ``broker_url`` is one URL
  or a list of the URLs of one RabbitMQ cluster's nodes; in memory a list is kept as
  kombu's failover form, the URLs joined by ``;``, so every process that hands
  ``broker_url`` to Celery or kombu fails over to the next node by itself.
  ``queue_type`` is ``classic`` (the default, a single broker) or ``quorum`` (node
  queues replicated by Raft across the cluster; publisher confirms on).  Both are
  written only when not the default, so such a file stays what older versions wrote.
- Readers (optional, top-level ``readers``): the API nodes allowed to open sealed values
  (mesh/openstack/sealing.py), each a name and an X25519 public key; the private key is
  ``keys/reader-<name>.key`` (64 hex chars, mode 0600).  Reader keys are encryption keys,
  not signing keys: they never vote and never sign.  A mesh.json without ``readers``
  loads as a mesh with none.
- Admins (optional, top-level ``admins`` and ``admin_threshold``): who may change the
  membership while the mesh runs, each a name and an Ed25519 public key, and how many of
  them must sign a change (k of m).  With the members above they make the genesis
  configuration (``genesis()``, pbft_tasks/core/config.py); the ledger holds every later
  one (docs/operations/membership.md).  A file without admins has a genesis no change
  can pass.  Both are written only when there are admins.
- Followers (optional, top-level ``followers``): non-validating peers that
  keep a verified copy of the ledger (pbft_tasks/follower.py).  Each is only a name: a
  follower never signs or votes, so it has no key.  Its queue is ``follower.<name>``
  and its ledger ``data_dir/follower-<name>/``.  Listing it here makes it a member the
  validators answer fetches from, and lets ``hdpbf status`` and the metrics show it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from pbft_tasks.brokers import QUEUE_TYPES
from ledger.state import ConfigRules
from pbft_tasks.core.collector import ALL_TO_ALL, COLLECTOR, VOTE_ROUTINGS
from pbft_tasks.core.config import ConfigRefused, Configuration, genesis
from pbft_tasks.core.messages import MAX_BATCH, MAX_CLIENT_LEN
from pbft_tasks.core.quorum import max_faulty
from pbft_tasks.core.replica import ReplicaConfig
from pbft_tasks.signing import (KeyFileError, atomic_write, generate_key, public_key_hex, read_key_file,
                                verify_hex, verify_key_from_hex, write_key_file)

__all__ = [
    "ConfigError", "NodeInfo", "ClientInfo", "ReaderInfo", "FollowerInfo", "MeshConfig",
    "init_mesh", "add_followers",
    "load_node_identity", "load_client_identity", "node_keys", "client_keys",
    "load_reader_identity", "reader_keys", "reader_key_path", "add_readers", "admin_key_path",
    "from_env", "env_key_file", "node_key_path", "client_key_path", "check_name",
    "DEFAULT_BROKER_URL", "DEFAULT_RESULT_BACKEND", "CONFIG_NAME", "LEDGER_FILE", "FORMAT_VERSION",
]

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/0"
CONFIG_NAME = "mesh.json"
LEDGER_FILE = "ledger.sqlite"  # a node's ledger, in its data directory (ledger_path)
KEYS_DIR = "keys"
FORMAT_VERSION = 1
MIN_NODES = 4
_CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PUBKEY_RE = re.compile(r"[0-9a-f]{64}")


class ConfigError(ValueError):
    """mesh.json, a key file or the environment is not usable; the message says why."""


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    id: int
    queue: str = ""  # "" means the default, f"node.{id}"
    public_key: str

    def __post_init__(self) -> None:
        if not self.queue and type(self.id) is int:
            object.__setattr__(self, "queue", f"node.{self.id}")


@dataclass(frozen=True)
class ClientInfo:
    """A client: its name, its Ed25519 public key, and the compute hosts it speaks for.

    ``hosts`` None (the entry has no ``hosts``) means the one host named like the
    client; ``()`` means none (a client that may not write console records)."""
    name: str
    public_key: str
    hosts: tuple[str, ...] | None = None

    def speaks_for(self) -> tuple[str, ...]:
        return (self.name,) if self.hosts is None else tuple(self.hosts)


@dataclass(frozen=True)
class ReaderInfo:
    """An API node allowed to open sealed values: a name and an X25519 public key."""
    name: str
    public_key: str


@dataclass(frozen=True)
class FollowerInfo:
    """A non-validating peer: a name only; it holds no key."""
    name: str

    @property
    def queue(self) -> str:
        return f"follower.{self.name}"


_INT_SETTINGS = ("checkpoint_interval", "log_window", "max_batch", "batch_timeout_ticks",
                 "pipeline", "tick_ms")
_STR_SETTINGS = ("broker_url", "result_backend", "data_dir", "durability")
_TOP_KEYS = {"version", "nodes", "clients", "readers", "followers", "admins", "admin_threshold",
             "metrics_port_base",
             "queue_type", "votes", *_STR_SETTINGS, *_INT_SETTINGS}
DEFAULT_METRICS_PORT_BASE = 9400
# The request timer of view change (sec. 4.4) and the retransmission timer, in ms,
# whatever the tick: 1 s, well above a loaded commit and well below an operator's patience.
TIMER_MS = 1000
# Every node sends every peer a STATUS this often (pbft_tasks/core/status.py), so one left
# behind in an idle mesh learns it and catches up: n-1 messages a node a period.
STATUS_MS = 1000


@dataclass
class MeshConfig:
    nodes: list[NodeInfo]
    clients: list[ClientInfo] = field(default_factory=list)
    readers: list[ReaderInfo] = field(default_factory=list)
    followers: list[FollowerInfo] = field(default_factory=list)
    admins: list[ClientInfo] = field(default_factory=list)
    admin_threshold: int = 0
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_RESULT_BACKEND
    data_dir: str = "data"
    checkpoint_interval: int = 64
    log_window: int = 256
    max_batch: int = 256
    batch_timeout_ticks: int = 0
    pipeline: int = 2
    # A worker ticks its replica every tick_ms from a timer thread.  Ticks only drive
    # timers (batches are cut when requests arrive or a batch commits), so a fast tick
    # buys nothing: at 2 ms an idle worker spent 8 % of a core ticking, at 10 ms 1.8 %.
    tick_ms: int = 10
    # "full": every transaction a vote depends on is fsynced (survives power loss);
    # "normal": WAL without fsync per commit (survives kill -9, not power loss).
    durability: str = "full"
    # Node <id>'s Prometheus endpoint is 127.0.0.1:(metrics_port_base + id) (pbft_tasks/metrics.py;
    # $HDPBF_METRICS_PORT overrides it, 0 disables).  Written to mesh.json only when not
    # the default, so a file stays what older versions wrote and read.
    metrics_port_base: int = DEFAULT_METRICS_PORT_BASE
    # "classic" node queues on one broker, or "quorum" queues on a RabbitMQ cluster.
    queue_type: str = "classic"
    # Vote routing (pbft_tasks/core/collector.py): "all-to-all", PBFT's O(n^2) votes, or
    # "collector", votes to the primary which forwards them as one certificate (O(n)).
    # Written to mesh.json only when not the default, like metrics_port_base.  A file
    # without it means all-to-all; ``hdpbf init`` picks by n (``default_votes``).
    votes: str = ALL_TO_ALL
    # Where this config was loaded from or saved to; not part of the file.
    path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.nodes = list(self.nodes)
        self.clients = list(self.clients)
        self.readers = list(self.readers)
        self.followers = list(self.followers)
        self.admins = list(self.admins)
        self.validate()

    # -- derived ----------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def f(self) -> int:
        return max_faulty(self.n)

    @property
    def base_dir(self) -> Path:
        """The directory holding mesh.json (relative paths are resolved against it)."""
        if self.path is None:
            raise ConfigError("this mesh config was not loaded from a file; "
                              "pass explicit paths or save it first")
        return self.path.parent

    @property
    def broker_urls(self) -> list[str]:
        """Every broker node's URL (one for a single broker)."""
        return self.broker_url.split(";")

    @property
    def data_path(self) -> Path:
        p = Path(self.data_dir)
        return p if p.is_absolute() else self.base_dir / p

    def node_data_dir(self, node_id: int) -> Path:
        """Where node ``node_id`` keeps its ledger (not created here)."""
        return self.data_path / f"node{self.node(node_id).id}"

    def follower_data_dir(self, name: str) -> Path:
        """Where follower ``name`` keeps its ledger (not created here)."""
        return self.data_path / f"follower-{self.follower_info(name).name}"

    def follower_info(self, name: str) -> FollowerInfo:
        """Follower ``name`` as listed here, or, for a valid name not listed, as a member
        the ledger's configuration may list (``hdpbf config propose --add-follower``):
        the validators answer it only if the configuration in force does."""
        for info in self.followers:
            if info.name == name:
                return info
        check_name(name, "follower name")
        return FollowerInfo(name=name)

    def follower(self, name: str) -> FollowerInfo:
        for info in self.followers:
            if info.name == name:
                return info
        known = ", ".join(f.name for f in self.followers) or "none"
        raise ConfigError(f"follower {name!r} is not in the mesh{self._where()} "
                          f"(known followers: {known}; add one with: hdpbf add-follower {name})")

    def ledger_path(self, node_id: int) -> Path:
        """Node ``node_id``'s ledger file (``LEDGER_FILE`` in its ``node_data_dir``)."""
        return self.node_data_dir(node_id) / LEDGER_FILE

    def replica_config(self) -> ReplicaConfig:
        """The pure core's settings for this mesh."""
        return ReplicaConfig(n=self.n, checkpoint_interval=self.checkpoint_interval,
                             log_window=self.log_window, max_batch=self.max_batch,
                             batch_timeout_ticks=self.batch_timeout_ticks,
                             pipeline=self.pipeline,
                             retransmit_ticks=self.timer_ticks(TIMER_MS),
                             view_change_ticks=self.timer_ticks(TIMER_MS),
                             status_ticks=self.timer_ticks(STATUS_MS),
                             votes=self.votes)

    def timer_ticks(self, ms: float) -> int:
        """``ms`` of wall-clock time in this mesh's ticks (at least one)."""
        return max(1, round(ms / self.tick_ms))

    def node(self, node_id: int) -> NodeInfo:
        for info in self.nodes:
            if info.id == node_id and type(node_id) is int:
                return info
        raise ConfigError(f"node {node_id!r} is not in the mesh"
                          f"{self._where()} (its nodes are 0..{self.n - 1})")

    def client(self, name: str) -> ClientInfo:
        for info in self.clients:
            if info.name == name:
                return info
        known = ", ".join(c.name for c in self.clients) or "none"
        raise ConfigError(f"client {name!r} is not in the mesh{self._where()} "
                          f"(known clients: {known})")

    def reader(self, name: str) -> ReaderInfo:
        for info in self.readers:
            if info.name == name:
                return info
        known = ", ".join(r.name for r in self.readers) or "none"
        raise ConfigError(f"reader {name!r} is not in the mesh{self._where()} "
                          f"(known readers: {known}; add one with: hdpbf add-reader {name})")

    def _where(self) -> str:
        return f" of {self.path}" if self.path is not None else ""

    # -- validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError on the first rule this config breaks."""
        for name in _INT_SETTINGS:
            v = getattr(self, name)
            lo = 0 if name in ("batch_timeout_ticks", "pipeline") else 1  # 0: every tick / no window
            if type(v) is not int or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name in _STR_SETTINGS:
            v = getattr(self, name)
            if type(v) is not str or not v:
                raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
        mp = self.metrics_port_base
        if type(mp) is not int or not (mp == 0 or 1 <= mp <= 65535 - len(self.nodes)):
            raise ConfigError(f"metrics_port_base must be 0 (no metrics endpoints) or a port "
                              f"1..{65535 - len(self.nodes)}, got {mp!r}")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigError(f"queue_type must be one of {list(QUEUE_TYPES)}, got {self.queue_type!r}")
        if any(not u.strip() for u in self.broker_url.split(";")):
            raise ConfigError(f"broker_url has an empty URL in its list: {self.broker_url!r}")
        if self.votes not in VOTE_ROUTINGS:
            raise ConfigError(f"votes must be one of {', '.join(map(repr, VOTE_ROUTINGS))}, "
                              f"got {self.votes!r}")
        if self.durability not in ("full", "normal"):
            raise ConfigError(f"durability must be 'full' or 'normal', got {self.durability!r}")
        ci, lw = self.checkpoint_interval, self.log_window
        if lw % ci or lw < 2 * ci:
            raise ConfigError(
                f"log_window ({lw}) must be a multiple of checkpoint_interval ({ci}) and at "
                f"least twice it, e.g. {2 * ci} or {4 * ci}")
        if self.max_batch > MAX_BATCH:
            raise ConfigError(f"max_batch ({self.max_batch}) must be at most {MAX_BATCH}, "
                              f"the largest batch a replica accepts on the wire")
        self._validate_nodes()
        self._validate_clients()
        self._validate_readers()
        self._validate_followers()
        self.genesis()  # the admins and their threshold keep the configuration's rules

    def genesis(self) -> Configuration:
        """The genesis configuration (pbft_tasks/core/config.py) of this mesh."""
        try:
            return genesis(validators={n.id: n.public_key for n in self.nodes},
                           clients={c.name: c.public_key for c in self.clients},
                           readers={r.name: r.public_key for r in self.readers},
                           followers=[f.name for f in self.followers],
                           admins={a.name: a.public_key for a in self.admins},
                           threshold=self.admin_threshold)
        except ConfigRefused as exc:
            raise ConfigError(f"the genesis configuration breaks a rule: {exc}") from None

    def config_rules(self) -> ConfigRules:
        """What config ops execute against in this mesh's ledgers (ledger/state.py)."""
        return ConfigRules(self.genesis(), self.checkpoint_interval, self.log_window, verify_hex)

    def _validate_followers(self) -> None:
        seen: set[str] = set()
        for i, fo in enumerate(self.followers):
            if not isinstance(fo, FollowerInfo):
                raise ConfigError(f"followers[{i}] must be a FollowerInfo, got {type(fo).__name__}")
            check_name(fo.name, f"followers[{i}].name")
            if fo.name in seen:
                raise ConfigError(f"duplicate follower name {fo.name!r}")
            seen.add(fo.name)

    def _validate_nodes(self) -> None:
        if len(self.nodes) < MIN_NODES:
            raise ConfigError(f"a PBFT mesh needs at least {MIN_NODES} nodes (n = 3f+1 "
                              f"tolerates f faults), got {len(self.nodes)}")
        seen_keys: dict[str, int] = {}
        seen_queues: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if not isinstance(node, NodeInfo):
                raise ConfigError(f"nodes[{i}] must be a NodeInfo, got {type(node).__name__}")
            if type(node.id) is not int:
                raise ConfigError(f"nodes[{i}].id must be an integer, got {node.id!r}")
            if type(node.queue) is not str or not node.queue:
                raise ConfigError(f"node {node.id}: queue must be a non-empty string")
            _check_pubkey(node.public_key, f"node {node.id}")
            if node.public_key in seen_keys:
                raise ConfigError(f"nodes {seen_keys[node.public_key]} and {node.id} have the "
                                  f"same public key; every node needs its own key")
            seen_keys[node.public_key] = node.id
            if node.queue in seen_queues:
                raise ConfigError(f"nodes {seen_queues[node.queue]} and {node.id} share the "
                                  f"queue {node.queue!r}")
            seen_queues[node.queue] = node.id
        ids = [node.id for node in self.nodes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"duplicate node ids: {dupes}")
        if sorted(ids) != list(range(len(ids))):
            raise ConfigError(f"node ids must be 0..{len(ids) - 1} (the primary of view v is "
                              f"node v mod n), got {sorted(ids)}")
        self.nodes.sort(key=lambda node: node.id)

    def _validate_clients(self) -> None:
        seen: set[str] = set()
        for i, c in enumerate(self.clients):
            if not isinstance(c, ClientInfo):
                raise ConfigError(f"clients[{i}] must be a ClientInfo, got {type(c).__name__}")
            check_name(c.name, f"clients[{i}].name")
            if c.name in seen:
                raise ConfigError(f"duplicate client name {c.name!r}")
            seen.add(c.name)
            _check_pubkey(c.public_key, f"client {c.name!r}")
            if c.hosts is not None:
                if type(c.hosts) not in (list, tuple):
                    raise ConfigError(f"client {c.name!r}: hosts must be a list of host "
                                      f"names, got {c.hosts!r}")
                for h in c.hosts:
                    if type(h) is not str or not h or len(h) > 255:
                        raise ConfigError(f"client {c.name!r}: host {h!r} is not a host name")
                self.clients[i] = dataclasses.replace(c, hosts=tuple(c.hosts))

    def _validate_readers(self) -> None:
        seen: set[str] = set()
        keys: set[str] = set()
        for i, r in enumerate(self.readers):
            if not isinstance(r, ReaderInfo):
                raise ConfigError(f"readers[{i}] must be a ReaderInfo, got {type(r).__name__}")
            check_name(r.name, f"readers[{i}].name")
            if r.name in seen:
                raise ConfigError(f"duplicate reader name {r.name!r}")
            seen.add(r.name)
            if type(r.public_key) is not str or not _PUBKEY_RE.fullmatch(r.public_key):
                raise ConfigError(f"reader {r.name!r}: public_key must be 64 lowercase hex "
                                  f"chars (a 32-byte X25519 public key), got {r.public_key!r}")
            if r.public_key in keys:
                raise ConfigError(f"reader {r.name!r} has the same public key as another "
                                  f"reader; every reader needs its own key")
            keys.add(r.public_key)

    # -- file -------------------------------------------------------------------------
    def to_json(self, base_dir: Path | None = None) -> dict:
        """The file's object; ``data_dir`` inside ``base_dir`` is written relative."""
        out: dict[str, Any] = {"version": FORMAT_VERSION}
        out["nodes"] = [{"id": n.id, "queue": n.queue, "public_key": n.public_key}
                        for n in self.nodes]
        out["clients"] = [{"name": c.name, "public_key": c.public_key,
                           **({} if c.hosts is None else {"hosts": list(c.hosts)})}
                          for c in self.clients]
        if self.readers:  # absent when empty: the file stays what older versions wrote
            out["readers"] = [{"name": r.name, "public_key": r.public_key} for r in self.readers]
        if self.followers:  # likewise
            out["followers"] = [{"name": f.name} for f in self.followers]
        if self.admins:  # likewise
            out["admins"] = [{"name": a.name, "public_key": a.public_key} for a in self.admins]
            out["admin_threshold"] = self.admin_threshold
        for name in (*_STR_SETTINGS, *_INT_SETTINGS):
            out[name] = getattr(self, name)
        if self.metrics_port_base != DEFAULT_METRICS_PORT_BASE:
            out["metrics_port_base"] = self.metrics_port_base
        if len(self.broker_urls) > 1:
            out["broker_url"] = self.broker_urls
        if self.queue_type != "classic":
            out["queue_type"] = self.queue_type
        if self.votes != ALL_TO_ALL:
            out["votes"] = self.votes
        data = Path(self.data_dir)
        if base_dir is not None and data.is_absolute() and data.is_relative_to(base_dir):
            out["data_dir"] = str(data.relative_to(base_dir)) or "."
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str = "mesh.json") -> "MeshConfig":
        if type(obj) is not dict:
            raise ConfigError(f"{source}: the top level must be a JSON object")
        unknown = sorted(set(obj) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"{source}: unknown keys {unknown} (allowed: {sorted(_TOP_KEYS)})")
        version = obj.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION or type(version) is not int:
            raise ConfigError(f"{source}: version {version!r} is not supported "
                              f"(this hdpbf reads version {FORMAT_VERSION})")
        if "nodes" not in obj:
            raise ConfigError(f"{source}: missing 'nodes'")
        nodes = _records(obj["nodes"], "nodes", {"id", "public_key"}, {"queue"}, source)
        clients = _records(obj.get("clients", []), "clients", {"name", "public_key"},
                           {"hosts"}, source)
        readers = _records(obj.get("readers", []), "readers", {"name", "public_key"}, set(),
                           source)
        followers = _records(obj.get("followers", []), "followers", {"name"}, set(), source)
        admins = _records(obj.get("admins", []), "admins", {"name", "public_key"}, set(), source)
        settings = {k: obj[k] for k in (*_STR_SETTINGS, *_INT_SETTINGS, "metrics_port_base",
                                        "queue_type", "votes", "admin_threshold") if k in obj}
        urls = settings.get("broker_url")
        if type(urls) is list:
            if not urls or any(type(u) is not str or not u or ";" in u for u in urls):
                raise ConfigError(f"{source}: broker_url must be a URL or a non-empty list of "
                                  f"URLs (one per broker node, without ';'), got {urls!r}")
            settings["broker_url"] = ";".join(urls)
        try:
            return cls(nodes=[NodeInfo(**r) for r in nodes],
                       clients=[ClientInfo(**r) for r in clients],
                       readers=[ReaderInfo(**r) for r in readers],
                       followers=[FollowerInfo(**r) for r in followers],
                       admins=[ClientInfo(**r) for r in admins], **settings)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MeshConfig":
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"mesh config {path} does not exist "
                              f"(create one with: hdpbf init --dir DIR)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read mesh config {path}: {exc}") from None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        config = cls.from_json(obj, source=str(path))
        config.path = path.absolute()
        config.data_dir = str(config.data_path)
        return config

    def save(self, path: str | os.PathLike) -> None:
        """Write mesh.json atomically (temp file + rename)."""
        self.validate()
        path = Path(path)
        mode = 0o600 if self._has_secrets() else 0o644
        base = path.absolute().parent
        data = (json.dumps(self.to_json(base), indent=2) + "\n").encode("utf-8")
        atomic_write(path, data, mode)
        if self.path is None and not Path(self.data_dir).is_absolute():
            self.data_dir = str(base / self.data_dir)
        self.path = path.absolute()

    def _has_secrets(self) -> bool:
        for url in (*self.broker_urls, self.result_backend):
            try:
                if urlsplit(url).password:
                    return True
            except ValueError:
                return True
        return False


def _check_pubkey(value: Any, who: str) -> None:
    if type(value) is not str or not _PUBKEY_RE.fullmatch(value):
        raise ConfigError(f"{who}: public_key must be 64 lowercase hex chars "
                          f"(a 32-byte Ed25519 public key), got {value!r}")


def check_name(value: Any, where: str) -> None:
    if (type(value) is not str or len(value) > MAX_CLIENT_LEN
            or not _CLIENT_NAME_RE.fullmatch(value)):
        raise ConfigError(f"{where} must be 1-{MAX_CLIENT_LEN} letters, digits, '_', '.' or '-' "
                          f"starting with a letter or digit, got {value!r}")


def _records(value: Any, name: str, required: set[str], optional: set[str],
             source: str) -> list[dict]:
    if type(value) is not list:
        raise ConfigError(f"{source}: '{name}' must be a list of objects")
    out = []
    for i, rec in enumerate(value):
        if type(rec) is not dict:
            raise ConfigError(f"{source}: {name}[{i}] must be an object")
        missing, extra = sorted(required - set(rec)), sorted(set(rec) - required - optional)
        if missing or extra:
            raise ConfigError(f"{source}: {name}[{i}] has missing keys {missing}, "
                              f"unknown keys {extra}")
        out.append(rec)
    return out


# -- keys -----------------------------------------------------------------------------

def node_key_path(config_dir: str | os.PathLike, node_id: int) -> Path:
    return Path(config_dir) / KEYS_DIR / f"node{node_id}.key"


def client_key_path(config_dir: str | os.PathLike, name: str) -> Path:
    return Path(config_dir) / KEYS_DIR / f"client-{name}.key"


def admin_key_path(config_dir: str | os.PathLike, name: str) -> Path:
    return Path(config_dir) / KEYS_DIR / f"admin-{name}.key"


def reader_key_path(config_dir: str | os.PathLike, name: str) -> Path:
    return Path(config_dir) / KEYS_DIR / f"reader-{name}.key"


def node_keys(config: MeshConfig) -> dict[int, VerifyKey]:
    return {n.id: verify_key_from_hex(n.public_key) for n in config.nodes}


def console_writers(config: MeshConfig) -> dict[str, tuple[str, ...]]:
    """Client name -> the compute hosts whose console records it may write
    (``ledger.state``'s rule; an entry without ``hosts`` speaks for the host of its name)."""
    return {c.name: c.speaks_for() for c in config.clients}


def client_keys(config: MeshConfig) -> dict[str, VerifyKey]:
    return {c.name: verify_key_from_hex(c.public_key) for c in config.clients}


def reader_keys(config: MeshConfig) -> dict[str, PublicKey]:
    """Every reader's X25519 public key, by name (empty for a mesh without readers)."""
    return {r.name: PublicKey(bytes.fromhex(r.public_key)) for r in config.readers}


def _read_key(path: Path) -> SigningKey:
    try:
        return read_key_file(path)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


def _owner_hint(config: MeshConfig, pub: str) -> str:
    for n in config.nodes:
        if n.public_key == pub:
            return f"; it is node {n.id}'s key"
    for c in config.clients:
        if c.public_key == pub:
            return f"; it is client {c.name!r}'s key"
    for r in config.readers:
        if r.public_key == pub:
            return f"; it is reader {r.name!r}'s key"
    return "; its public key is not in mesh.json at all"


def _checked_signing_key(config: MeshConfig, path: Path, expected_pub: str,
                         mismatch: str) -> SigningKey:
    """Read an Ed25519 key file and check it against its public key in mesh.json;
    ``mismatch`` completes "key file F belongs to ..." when it does not match."""
    key = _read_key(path)
    pub = public_key_hex(key)
    if pub != expected_pub:
        raise ConfigError(f"key file {path} belongs to {mismatch} "
                          f"in {config.path or 'mesh.json'}{_owner_hint(config, pub)}")
    return key


def load_node_identity(config: MeshConfig, node_id: int,
                       key_path: str | os.PathLike | None = None) -> SigningKey:
    """The private key of ``node_id``, checked against its public key in mesh.json."""
    info = config.node(node_id)
    path = Path(key_path) if key_path is not None else node_key_path(config.base_dir, node_id)
    return _checked_signing_key(config, path, info.public_key,
                                f"a different node than node {node_id}")


def load_client_identity(config: MeshConfig, name: str,
                         key_path: str | os.PathLike | None = None) -> SigningKey:
    """The private key of client ``name``, checked against its public key in mesh.json.
    A client mesh.json does not list (added with ``hdpbf config``) needs ``key_path``;
    its key is the mesh's business: the validators refuse it unless the configuration in
    force lists it with that key."""
    if key_path is not None and name not in {c.name for c in config.clients}:
        check_name(name, "client name")
        return _read_key(Path(key_path))
    info = config.client(name)
    path = Path(key_path) if key_path is not None else client_key_path(config.base_dir, name)
    return _checked_signing_key(config, path, info.public_key,
                                f"a different identity than client {name!r}")


def load_reader_identity(config: MeshConfig, name: str,
                         key_path: str | os.PathLike | None = None) -> PrivateKey:
    """The X25519 private key of reader ``name``, checked against mesh.json.

    The file has the same shape and mode rules as the Ed25519 key files (64 hex chars,
    0600, refused when group/world accessible), so ``read_key_file`` checks it; the 32
    bytes are used as an X25519 secret, never as a signing seed."""
    info = config.reader(name)
    path = Path(key_path) if key_path is not None else reader_key_path(config.base_dir, name)
    raw = bytes(_read_key(path))  # SigningKey's bytes are the 32-byte file contents
    key = PrivateKey(raw)
    pub = bytes(key.public_key).hex()
    if pub != info.public_key:
        raise ConfigError(f"key file {path} belongs to a different identity than reader "
                          f"{name!r} in {config.path or 'mesh.json'}{_owner_hint(config, pub)}")
    return key


def _write_reader_key(path: Path, key: PrivateKey) -> None:
    atomic_write(path, (bytes(key).hex() + "\n").encode("ascii"), 0o600)


def _new_signing_keys(names: Iterable[str], role: str) -> dict[str, Any]:
    """A fresh Ed25519 key for each name; a bad or repeated name is refused."""
    keys: dict[str, Any] = {}
    for name in names:
        check_name(name, f"{role} name")
        if name in keys:
            raise ConfigError(f"duplicate {role} name {name!r}")
        keys[name] = generate_key()
    return keys


def _new_readers(names: Iterable[str]) -> dict[str, PrivateKey]:
    out: dict[str, PrivateKey] = {}
    for name in names:
        check_name(name, "reader name")
        if name in out:
            raise ConfigError(f"duplicate reader name {name!r}")
        out[name] = PrivateKey.generate()
    return out


def add_readers(config_path: str | os.PathLike, names: Iterable[str],
                replace: bool = False) -> MeshConfig:
    """Give readers ``names`` fresh X25519 keys in an existing mesh and save mesh.json.

    An existing reader of the same name keeps its key unless ``replace``; with
    ``replace`` the mesh's readers become exactly ``names`` (old reader key files are
    removed).  Workers need no restart (replicas never use reader keys); a compute
    service seals for the readers it loaded at start, so restart it to include new ones."""
    path = Path(config_path)
    if path.is_dir():
        path = path / CONFIG_NAME
    config = MeshConfig.load(path)
    names = list(names)
    existing = {} if replace else {r.name: r for r in config.readers}
    fresh = _new_readers(n for n in names if n not in existing)
    readers = list(existing.values())
    readers += [ReaderInfo(name=n, public_key=bytes(k.public_key).hex()) for n, k in fresh.items()]
    config.readers = readers
    config.validate()
    base = config.base_dir
    for name, key in fresh.items():
        _write_reader_key(reader_key_path(base, name), key)
    if replace:
        keep = {reader_key_path(base, r.name).name for r in readers}
        for old in (base / KEYS_DIR).glob("reader-*.key"):
            if old.name not in keep:
                old.unlink()
    config.save(path)
    return config


def add_followers(config_path: str | os.PathLike, names: Iterable[str]) -> MeshConfig:
    """List followers ``names`` in an existing mesh (those already listed stay) and save
    mesh.json.  No keys: a follower never signs.  Running workers read the list at start,
    so restart them for a new follower's fetches to be answered (pushes reach it at once:
    its queue binds to the block exchange itself)."""
    path = Path(config_path)
    if path.is_dir():
        path = path / CONFIG_NAME
    config = MeshConfig.load(path)
    have = {f.name for f in config.followers}
    config.followers = config.followers + [FollowerInfo(n) for n in dict.fromkeys(names) if n not in have]
    config.validate()
    config.save(path)
    return config


# -- init -----------------------------------------------------------------------------

# From this many nodes a new mesh routes votes through the collector (docs/benchmarks/vote-routing.md): on these machines all-to-all at n = 7 had 2.6 x the messages per batch,
# 1.3 x the worker CPU per request and 0.9 x the tx/s of the collector, and at n = 10 and
# 16 it did not finish the benchmark (its O(n^2) votes queue up behind each other until
# the request timers expire); at n = 4 the two are within noise of each other, and
# all-to-all keeps one hop less per phase and no single replica on every vote's path.
COLLECTOR_FROM_N = 7


def default_votes(n: int) -> str:
    """The vote routing ``hdpbf init`` writes for an n-node mesh."""
    return COLLECTOR if n >= COLLECTOR_FROM_N else ALL_TO_ALL


def init_mesh(dir: str | os.PathLike, nodes: int = 4, clients: Iterable[str] = ("admin",),
              broker_url: str = DEFAULT_BROKER_URL,
              result_backend: str = DEFAULT_RESULT_BACKEND,
              force: bool = False, readers: Iterable[str] = (),
              queue_type: str = "classic", votes: str | None = None,
              hosts: dict[str, Iterable[str]] | None = None,
              admins: Iterable[str] = (), admin_threshold: int | None = None) -> MeshConfig:
    """Create DIR/mesh.json and a fresh key for every node and client, and an X25519
    key for every reader (API node allowed to open sealed values; none by default).
    ``admins``: who may sign membership changes (``keys/admin-<name>.key`` each);
    ``admin_threshold`` how many must sign (default: a majority of them).
    ``votes``: the vote routing; None picks ``default_votes(nodes)``.  ``hosts``: client
    name -> the compute hosts it speaks for (a client left out speaks for its own name).

    Everything is checked before anything is written.  With ``force`` an existing mesh is
    replaced: every key is new, so running workers of the old mesh will be rejected."""
    base = Path(dir)
    config_path = base / CONFIG_NAME
    if type(nodes) is not int or nodes < MIN_NODES:
        raise ConfigError(f"a PBFT mesh needs at least {MIN_NODES} nodes (n = 3f+1 "
                          f"tolerates f faults), got {nodes}")
    clients = list(clients)
    if config_path.exists() and not force:
        raise ConfigError(f"{config_path} already exists; to replace that mesh and all its keys "
                          f"run again with --force (force=True from Python)")
    node_sks = {i: generate_key() for i in range(nodes)}
    client_sks = _new_signing_keys(clients, "client")
    reader_sks = _new_readers(readers)
    strangers = sorted(set(hosts or {}) - set(client_sks))
    if strangers:
        raise ConfigError(f"hosts given for {strangers}, which are not clients")
    admin_sks = _new_signing_keys(admins, "admin")
    if admin_threshold is None:
        admin_threshold = len(admin_sks) // 2 + 1 if admin_sks else 0
    config = MeshConfig(
        nodes=[NodeInfo(id=i, public_key=public_key_hex(k)) for i, k in node_sks.items()],
        clients=[ClientInfo(name=c, public_key=public_key_hex(k),
                            hosts=None if c not in (hosts or {}) else tuple(hosts[c]))
                 for c, k in client_sks.items()],
        readers=[ReaderInfo(name=r, public_key=bytes(k.public_key).hex())
                 for r, k in reader_sks.items()],
        admins=[ClientInfo(name=a, public_key=public_key_hex(k)) for a, k in admin_sks.items()],
        admin_threshold=admin_threshold,
        broker_url=broker_url, result_backend=result_backend, queue_type=queue_type,
        votes=default_votes(nodes) if votes is None else votes)

    keys_dir = base / KEYS_DIR
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    if force:  # keys of the mesh being replaced must not linger as if still valid
        keep = {node_key_path(base, i).name for i in node_sks}
        keep |= {client_key_path(base, c).name for c in client_sks}
        keep |= {reader_key_path(base, r).name for r in reader_sks}
        keep |= {admin_key_path(base, a).name for a in admin_sks}
        for old in keys_dir.iterdir():
            if (old.name not in keep and old.is_file()
                    and re.fullmatch(r"node\d+\.key|(client|reader|admin)-.+\.key", old.name)):
                old.unlink()
    for i, key in node_sks.items():
        write_key_file(node_key_path(base, i), key)
    for name, key in client_sks.items():
        write_key_file(client_key_path(base, name), key)
    for name, key in reader_sks.items():
        _write_reader_key(reader_key_path(base, name), key)
    for name, key in admin_sks.items():
        write_key_file(admin_key_path(base, name), key)
    # mesh.json last: a crash part way leaves no config that points at missing keys.
    config.save(config_path)
    return config


# -- environment ----------------------------------------------------------------------

ENV_CONFIG = "HDPBF_CONFIG"
ENV_NODE_ID = "HDPBF_NODE_ID"
ENV_KEY_FILE = "HDPBF_KEY_FILE"


def from_env(environ: dict[str, str] | None = None) -> tuple[MeshConfig, int | None]:
    """The mesh named by $HDPBF_CONFIG and this process's node from $HDPBF_NODE_ID (None
    when unset or empty: a client, not a replica)."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_CONFIG, "")
    if not path:
        raise ConfigError(f"{ENV_CONFIG} is not set; point it at the mesh.json that "
                          f"'hdpbf init' wrote, e.g. {ENV_CONFIG}=/etc/hdpbf/mesh.json")
    try:
        config = MeshConfig.load(path)
    except ConfigError as exc:
        raise ConfigError(f"{ENV_CONFIG}={path}: {exc}") from None
    raw = env.get(ENV_NODE_ID, "").strip()
    if not raw:
        return config, None
    try:
        node_id = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_NODE_ID}={raw!r} is not an integer node id") from None
    try:
        config.node(node_id)
    except ConfigError as exc:
        raise ConfigError(f"{ENV_NODE_ID}={raw}: {exc}") from None
    return config, node_id


def env_key_file(environ: dict[str, str] | None = None) -> Path | None:
    """$HDPBF_KEY_FILE, the key path to pass to load_node_identity (None: the default)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_KEY_FILE, "")
    return Path(raw) if raw else None
