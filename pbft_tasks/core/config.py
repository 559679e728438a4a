"""Membership and keys as ordered entries: the configuration history (pure, no I/O).

Owns: ``Configuration`` (who the validators, clients, readers, followers and admins are,
with their public keys, and the admin policy k of m), its canonical form and hash; the
configuration change (a proposal signed by admins, ``change_bytes``); the deterministic
check of a change (``check_change``); and ``ConfigHistory``: every configuration the
ledger accepted, the sequence number each one is in force from, the refusals counted by
reason, and the validity range of every key.  BFT-SMaRt orders a signed reconfiguration
request and installs it after that instance; CometBFT applies validator updates two
heights later; here a change executed at seq s is in force from a checkpoint boundary.

Rules of this file (docs/PROTOCOL.md, "Membership"):
- The genesis configuration has version 0 and is in force from seq 1.  Its hash, and the
  hash of every later configuration, is SHA-256 over its canonical form (``to_dict``).
- A change names the configuration it changes: ``version`` and ``base`` (that
  configuration's hash) must be those of the newest accepted configuration (pending ones
  included), otherwise it is refused as ``config_stale``.  Of two proposals built on the
  same version, the one ordered first wins and the other is stale.
- A change is signed by admins of the newest accepted configuration: it counts only
  distinct admins whose signature over ``change_bytes`` verifies with their key; fewer
  than the policy's threshold is ``config_unauthorized``.  The signature check is a
  function the caller passes in (``verify(public_key_hex, data, signature_hex)``), so
  this module never touches a key.
- A change whose operations do not apply (unknown member, a name or key already in
  use, fewer than 4 validators, a threshold outside 1..number of admins) is refused with
  that reason.  A refused change executes as a no-op: the history is unchanged except
  for its refusal counter.  Nothing a peer or client sends can make ``execute`` raise;
  only our own bug does (a seq that does not grow).
- A history may refuse every change of the validators (``validators=False``,
  ``config_unsupported``): what the ledger does until the replicas switch validator sets
  at the boundary (docs/PROTOCOL.md, "Membership").
- Boundary: a change executed at seq s is in force from ``effective_from(s)`` =
  the first checkpoint after s + log_window, plus one.  Every replica that orders a seq
  past that checkpoint has a stable checkpoint above s (its log window is L), so it has
  executed the change: every correct replica uses the same configuration at every seq.
- Changes accepted before the previous one took effect stack: each one's version is one
  more than the last accepted, and ``at(seq)`` returns the last one in force at seq.
- Validators keep a stable ``id`` across configurations; a replica's index (its
  ``sender`` number and the primary order) in a configuration is the position of its id
  in the sorted list of that configuration's validators.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .messages import canonical, sha256_hex

Verify = Callable[[str, bytes, str], bool]

MIN_VALIDATORS = 4
MAX_MEMBERS = 4096
MAX_OPS = 64
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KEY_RE = re.compile(r"[0-9a-f]{64}")

# Reasons a change is refused (counted in ``ConfigHistory.refused``).
REFUSALS = ("config_malformed", "config_stale", "config_unauthorized", "config_unknown_member",
            "config_duplicate", "config_too_few_validators", "config_bad_threshold",
            "config_unsupported")

# op -> (role, action); role "validator" is keyed by "id", "follower" has no key.
OPS = {f"{a}_{r}": (r, a) for r in ("client", "reader", "validator", "admin")
       for a in ("add", "remove", "rotate")}
OPS.update({"add_follower": ("follower", "add"), "remove_follower": ("follower", "remove"),
            "set_threshold": ("admin", "threshold")})


class ConfigRefused(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Configuration:
    version: int
    validators: tuple  # ((id, key), ...) sorted by id
    clients: tuple     # ((name, key), ...) sorted by name
    readers: tuple     # ((name, key), ...)
    followers: tuple   # (name, ...)
    admins: tuple      # ((name, key), ...)
    threshold: int

    @property
    def n(self) -> int:
        return len(self.validators)

    def to_dict(self) -> dict:
        return {"version": self.version,
                "validators": [{"id": i, "key": k} for i, k in self.validators],
                "clients": [{"name": n, "key": k} for n, k in self.clients],
                "readers": [{"name": n, "key": k} for n, k in self.readers],
                "followers": list(self.followers),
                "admins": [{"name": n, "key": k} for n, k in self.admins],
                "threshold": self.threshold}

    @property
    def hash(self) -> str:
        return sha256_hex(self.to_dict())

    # -- who is who -------------------------------------------------------------------
    def validator_keys(self) -> list[str]:
        """Public keys by replica index (the ``sender`` number in this configuration)."""
        return [k for _, k in self.validators]

    def index_of(self, node_id: int) -> Optional[int]:
        ids = [i for i, _ in self.validators]
        return ids.index(node_id) if node_id in ids else None

    def client_key(self, name: str) -> Optional[str]:
        return dict(self.clients).get(name)

    def reader_key(self, name: str) -> Optional[str]:
        return dict(self.readers).get(name)

    def primary_id(self, view: int) -> int:
        """The stable id of the primary of ``view`` (v mod n, by index)."""
        return self.validators[view % self.n][0]


def _name(v: Any, what: str) -> str:
    if type(v) is not str or not _NAME_RE.fullmatch(v):
        raise ConfigRefused("config_malformed", f"{what} must be a name of [A-Za-z0-9_.-], got {v!r}")
    return v


def _key(v: Any, what: str) -> str:
    if type(v) is not str or not _KEY_RE.fullmatch(v):
        raise ConfigRefused("config_malformed", f"{what} must be 64 lowercase hex chars")
    return v


def _id(v: Any) -> int:
    if type(v) is not int or not 0 <= v < 2**31:
        raise ConfigRefused("config_malformed", f"validator id must be an integer >= 0, got {v!r}")
    return v


def _list(d: dict, name: str) -> list:
    v = d.get(name)
    if type(v) is not list or len(v) > MAX_MEMBERS:
        raise ConfigRefused("config_malformed", f"{name!r} must be a list")
    return v


def _pairs(d: dict, name: str, key_field: str) -> tuple:
    out = []
    for e in _list(d, name):
        if type(e) is not dict or set(e) != {key_field, "key"}:
            raise ConfigRefused("config_malformed", f"{name} entries need exactly {key_field}, key")
        who = _id(e["id"]) if key_field == "id" else _name(e["name"], f"{name} name")
        out.append((who, _key(e["key"], f"{name} key")))
    return tuple(sorted(out))


def from_dict(d: Any) -> Configuration:
    """A configuration from its canonical form, checked (raises ``ConfigRefused``)."""
    if type(d) is not dict or set(d) != {"version", "validators", "clients", "readers",
                                         "followers", "admins", "threshold"}:
        raise ConfigRefused("config_malformed", "a configuration needs exactly version, validators, "
                            "clients, readers, followers, admins, threshold")
    if type(d["version"]) is not int or d["version"] < 0:
        raise ConfigRefused("config_malformed", "version must be an integer >= 0")
    if type(d["threshold"]) is not int:
        raise ConfigRefused("config_malformed", "threshold must be an integer")
    cfg = Configuration(version=d["version"], validators=_pairs(d, "validators", "id"),
                        clients=_pairs(d, "clients", "name"), readers=_pairs(d, "readers", "name"),
                        followers=tuple(sorted(_name(f, "follower") for f in _list(d, "followers"))),
                        admins=_pairs(d, "admins", "name"), threshold=d["threshold"])
    check_configuration(cfg)
    return cfg


def genesis(validators: dict[int, str], clients: dict[str, str], readers: dict[str, str],
            followers: list[str], admins: dict[str, str], threshold: int) -> Configuration:
    """The genesis configuration (version 0) from plain maps of public keys."""
    return from_dict({"version": 0,
                      "validators": [{"id": i, "key": k} for i, k in validators.items()],
                      "clients": [{"name": n, "key": k} for n, k in clients.items()],
                      "readers": [{"name": n, "key": k} for n, k in readers.items()],
                      "followers": list(followers),
                      "admins": [{"name": n, "key": k} for n, k in admins.items()],
                      "threshold": threshold})


def check_configuration(cfg: Configuration) -> None:
    """The rules every configuration keeps; raises ``ConfigRefused`` naming the broken one."""
    for role in ("validators", "clients", "readers", "admins"):
        pairs = getattr(cfg, role)
        names = [w for w, _ in pairs]
        if len(set(names)) != len(names):
            raise ConfigRefused("config_duplicate", f"two {role} share a name")
        keys = [k for _, k in pairs]
        if len(set(keys)) != len(keys):
            # one key behind two validators would count twice towards a quorum
            raise ConfigRefused("config_duplicate", f"two {role} share a public key")
    if len(set(cfg.followers)) != len(cfg.followers):
        raise ConfigRefused("config_duplicate", "two followers share a name")
    if cfg.n < MIN_VALIDATORS:
        raise ConfigRefused("config_too_few_validators",
                            f"{cfg.n} validators; PBFT needs at least {MIN_VALIDATORS}")
    if cfg.admins and not 1 <= cfg.threshold <= len(cfg.admins):
        raise ConfigRefused("config_bad_threshold",
                            f"threshold {cfg.threshold} not in 1..{len(cfg.admins)} admins")
    if not cfg.admins and cfg.threshold != 0:
        raise ConfigRefused("config_bad_threshold", "a configuration without admins has threshold 0")


# -- changes ------------------------------------------------------------------------

def proposal(cfg: Configuration, ops: list[dict]) -> dict:
    """An unsigned change of ``cfg`` (its version and hash) made of ``ops``."""
    return {"version": cfg.version, "base": cfg.hash, "ops": list(ops), "sigs": {}}


def change_bytes(change: dict) -> bytes:
    """What each admin signs: the canonical change without its signatures, tagged."""
    body = {k: v for k, v in change.items() if k != "sigs"}
    return canonical({"type": "ConfigChange", **body})


def _parse_change(change: Any) -> tuple[int, str, list, dict]:
    if type(change) is not dict or set(change) != {"version", "base", "ops", "sigs"}:
        raise ConfigRefused("config_malformed", "a change needs exactly version, base, ops, sigs")
    version, base, ops, sigs = change["version"], change["base"], change["ops"], change["sigs"]
    if type(version) is not int or version < 0:
        raise ConfigRefused("config_malformed", "version must be an integer >= 0")
    _key(base, "base")
    if type(ops) is not list or not 1 <= len(ops) <= MAX_OPS:
        raise ConfigRefused("config_malformed", f"ops must be a list of 1..{MAX_OPS} operations")
    if type(sigs) is not dict or len(sigs) > MAX_MEMBERS:
        raise ConfigRefused("config_malformed", "sigs must be an object admin -> signature")
    for who, sig in sigs.items():
        _name(who, "signer")
        if type(sig) is not str or len(sig) > 256:
            raise ConfigRefused("config_malformed", "a signature must be a hex string")
    return version, base, ops, sigs


def _apply_op(d: dict, op: Any) -> None:
    """Apply one operation to the mutable form ``d`` (lists of dicts)."""
    if type(op) is not dict or op.get("op") not in OPS:
        raise ConfigRefused("config_malformed", f"unknown operation {op!r:.80}")
    role, action = OPS[op["op"]]
    if action == "threshold":
        if set(op) != {"op", "threshold"} or type(op["threshold"]) is not int:
            raise ConfigRefused("config_malformed", "set_threshold needs exactly op, threshold")
        d["threshold"] = op["threshold"]
        return
    if role == "follower":
        if set(op) != {"op", "name"}:
            raise ConfigRefused("config_malformed", f"{op['op']} needs exactly op, name")
        name = _name(op["name"], "follower")
        if action == "add":
            if name in d["followers"]:
                raise ConfigRefused("config_duplicate", f"follower {name} exists")
            d["followers"].append(name)
        else:
            if name not in d["followers"]:
                raise ConfigRefused("config_unknown_member", f"no follower {name}")
            d["followers"].remove(name)
        return
    field_ = role + "s"
    who_field = "id" if role == "validator" else "name"
    want = {"op", who_field} | ({"key"} if action != "remove" else set())
    if set(op) != want:
        raise ConfigRefused("config_malformed", f"{op['op']} needs exactly {', '.join(sorted(want))}")
    who = _id(op["id"]) if role == "validator" else _name(op["name"], role)
    members = d[field_]
    found = [e for e in members if e[who_field] == who]
    if action == "add":
        if found:
            raise ConfigRefused("config_duplicate", f"{role} {who} exists")
        members.append({who_field: who, "key": _key(op["key"], f"{role} key")})
    elif not found:
        raise ConfigRefused("config_unknown_member", f"no {role} {who}")
    elif action == "remove":
        members.remove(found[0])
    else:
        found[0]["key"] = _key(op["key"], f"{role} key")


def check_change(cfg: Configuration, change: Any, verify: Verify,
                 validators: bool = True) -> Configuration:
    """The configuration ``change`` makes of ``cfg`` (the newest accepted one), or
    ``ConfigRefused`` with the reason.  Deterministic given ``verify``.  With
    ``validators`` False a change of the validators is refused (``config_unsupported``):
    a mesh whose replicas do not yet switch validator sets at the boundary."""
    version, base, ops, sigs = _parse_change(change)
    if not validators and any(type(op) is dict and OPS.get(op.get("op"), ("",))[0] == "validator"
                              for op in ops):
        raise ConfigRefused("config_unsupported", "this mesh does not change its validators")
    if version != cfg.version or base != cfg.hash:
        raise ConfigRefused("config_stale", f"built on version {version}, current is {cfg.version}")
    admins = dict(cfg.admins)
    data = change_bytes(change)
    good = {who for who, sig in sigs.items()
            if who in admins and _safe_verify(verify, admins[who], data, sig)}
    if not admins or len(good) < cfg.threshold:
        raise ConfigRefused("config_unauthorized",
                            f"{len(good)} valid admin signatures, policy needs {cfg.threshold} "
                            f"of {len(admins)}")
    return apply_ops(cfg, ops)


def apply_ops(cfg: Configuration, ops: Any) -> Configuration:
    """The configuration after ``ops`` (version + 1), signatures aside; ``ConfigRefused``
    if they do not apply.  ``check_change`` ends here; a proposer checks with it first."""
    if type(ops) is not list or not 1 <= len(ops) <= MAX_OPS:
        raise ConfigRefused("config_malformed", f"ops must be a list of 1..{MAX_OPS} operations")
    d = cfg.to_dict()
    for op in ops:
        _apply_op(d, op)
    d["version"] = cfg.version + 1
    return from_dict(d)


def _safe_verify(verify: Verify, key: str, data: bytes, sig: str) -> bool:
    # the verifier's own errors on garbage (odd hex, wrong length) mean "not valid"
    try:
        return bool(verify(key, data, sig))
    except (ValueError, TypeError):
        return False


def effective_from(seq: int, checkpoint_interval: int, log_window: int) -> int:
    """The first seq ordered under a change executed at ``seq``: one past the first
    checkpoint after seq + log_window."""
    k = checkpoint_interval
    return ((seq + log_window) // k + 1) * k + 1


# -- the history --------------------------------------------------------------------

class ConfigHistory:
    """Every accepted configuration with the seq it is in force from, and the refusals.

    Changes only through ``execute`` (and ``from_record``); the same calls in the same
    order give the same history on every replica."""

    def __init__(self, genesis_cfg: Configuration, checkpoint_interval: int, log_window: int):
        if genesis_cfg.version != 0:
            raise ValueError("the genesis configuration has version 0")
        self.k, self.L = checkpoint_interval, log_window
        self._from: list[int] = [1]
        self._cfgs: list[Configuration] = [genesis_cfg]
        self._executed_at: list[int] = [0]
        self.last_seq = 0
        self.refused: dict[str, int] = {}

    @property
    def genesis(self) -> Configuration:
        return self._cfgs[0]

    @property
    def latest(self) -> Configuration:
        """The newest accepted configuration (perhaps not yet in force)."""
        return self._cfgs[-1]

    @property
    def single(self) -> bool:
        """Whether the history holds one configuration only (the genesis)."""
        return len(self._cfgs) == 1

    def at(self, seq: int) -> Configuration:
        """The configuration in force at ``seq`` (>= 1)."""
        i = bisect.bisect_right(self._from, seq) - 1
        return self._cfgs[max(i, 0)]

    def entries(self) -> list[tuple[int, int, Configuration]]:
        """(executed at seq, in force from seq, configuration), oldest first."""
        return list(zip(self._executed_at, self._from, self._cfgs))

    def pending(self, seq: int) -> list[Configuration]:
        """Accepted configurations not yet in force at ``seq``."""
        return [c for f, c in zip(self._from, self._cfgs) if f > seq]

    def execute(self, seq: int, change: Any, verify: Verify, validators: bool = True) -> dict:
        """Execute a change ordered at ``seq``.  Returns the deterministic result the
        client is answered with: accepted with the new version and the seq it is in
        force from, or refused with a reason (a no-op, counted)."""
        if seq < self.last_seq:
            raise ValueError(f"config change at seq {seq} after one at {self.last_seq}")
        self.last_seq = seq
        try:
            new = check_change(self.latest, change, verify, validators)
        except ConfigRefused as refusal:
            self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
            return {"config": "refused", "reason": refusal.reason, "detail": refusal.detail,
                    "version": self.latest.version}
        start = max(effective_from(seq, self.k, self.L), self._from[-1])
        self._from.append(start)
        self._cfgs.append(new)
        self._executed_at.append(seq)
        return {"config": "accepted", "version": new.version, "hash": new.hash,
                "executed": seq, "effective": start}

    def key_ranges(self) -> list[dict]:
        """Every (role, member, key) with the seqs it is valid for: ``from`` inclusive,
        ``until`` exclusive (None: still valid).  A rotated or removed key's range ends
        where the next configuration takes over."""
        out: list[dict] = []
        open_: dict[tuple, dict] = {}
        for start, cfg in zip(self._from, self._cfgs):
            now = _members(cfg)
            for ident, rng in list(open_.items()):
                if ident not in now:
                    if rng["from"] < start:
                        rng["until"] = start
                        out.append(rng)
                    del open_[ident]
            for ident in now:
                if ident not in open_:
                    role, who, key = ident
                    open_[ident] = {"role": role, "member": who, "key": key, "from": start,
                                    "until": None}
        out += open_.values()
        return sorted(out, key=lambda r: (r["from"], r["role"], str(r["member"])))

    def key_valid(self, role: str, member: Any, key: str, seq: int) -> bool:
        """Whether ``key`` was ``member``'s key (as a ``role``) at ``seq``."""
        return (member, key) in _role_pairs(self.at(seq), role)

    # -- persistence ------------------------------------------------------------------
    def to_record(self) -> dict:
        return {"k": self.k, "L": self.L, "last_seq": self.last_seq,
                "refused": dict(sorted(self.refused.items())),
                "entries": [{"executed": e, "from": f, "config": c.to_dict()}
                            for e, f, c in self.entries()]}

    @classmethod
    def from_record(cls, rec: dict) -> "ConfigHistory":
        entries = rec["entries"]
        h = cls(from_dict(entries[0]["config"]), rec["k"], rec["L"])
        for e in entries[1:]:
            h._executed_at.append(e["executed"])
            h._from.append(e["from"])
            h._cfgs.append(from_dict(e["config"]))
        h.last_seq = rec["last_seq"]
        h.refused = dict(rec["refused"])
        return h


def _role_pairs(cfg: Configuration, role: str) -> set:
    if role == "follower":
        return {(f, None) for f in cfg.followers}
    return set(getattr(cfg, role + "s"))


def _members(cfg: Configuration) -> list[tuple]:
    out = []
    for role in ("validator", "client", "reader", "admin"):
        out += [(role, who, key) for who, key in getattr(cfg, role + "s")]
    out += [("follower", f, None) for f in cfg.followers]
    return out


def replay(genesis_cfg: Configuration, changes: list[tuple[int, Any]], verify: Verify,
           checkpoint_interval: int, log_window: int) -> ConfigHistory:
    """The history that ``changes`` ((seq, change) in ledger order) build from genesis:
    what a follower or ``hdpbf verify`` recomputes from the chain alone."""
    h = ConfigHistory(genesis_cfg, checkpoint_interval, log_window)
    for seq, change in changes:
        h.execute(seq, change, verify)
    return h
