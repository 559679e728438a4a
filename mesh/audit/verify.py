"""``hdpbf verify`` (the ledger audit) and ``hdpbf bench verify``.

Owns: the offline audit of a node's ledger file, which the pure ``ledger.audit`` cannot do
alone because it needs keys and PyNaCl: it walks the whole chain with ``LedgerReader`` and
checks, block by block,
  1. the chain: seq, prev link, header hash, batch digest (``ledger.audit.check_block``);
  2. the commit certificate: at least 2f+1 Commits from distinct validators of the
     configuration in force at the block's seq, each for the block's own view, seq and
     digest (Castro-Liskov 1999 sec. 4.2, "committed");
  3. every signature: each commit's node signature and each request's client signature,
     against the keys in force at the block's seq (a rotated or removed key signs
     nothing after its boundary), batched through
     ``pbft_tasks.batch_verify.BatchVerifier`` (threads, or Ray);
  4. the derived rows: the key/value state replayed from the blocks with
     ``ledger.state.apply_block`` must equal the stored ``kv/`` records, ``m/head`` must
     name the last block, and every ``p/`` protocol record must decode.

Rules of this file:
- The result names the FIRST bad block: structural checks run as blocks stream in, and
  signatures are verified in windows of ``WINDOW`` signatures; the first failure of a
  window is mapped back to its block, and nothing after it counts.
- A deleted block is named by its seq ("block 3: missing"), not by the next one found.
- Every signature must verify, not just 2f+1 of them: a node stores only commits it
  verified, so any bad one is a changed byte.
- A ledger being written while it is audited is fine: the chain is one snapshot
  (one SELECT) and kv/head rows written by later blocks are not held against it.
- The configuration history is rebuilt from the chain itself: the genesis the ledger is
  bound to (``m/genesis``; mesh.json's for a ledger written before binding), then every
  config entry as the replicas executed it (pbft_tasks/core/config.py).
- Exit codes: 0 every audited ledger is intact; 1 a bad block (or row); 2 bad input.
"""
from __future__ import annotations

import bisect
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import click
from rich.table import Table

from ledger import format as fmt
from ledger.audit import check_block
from ledger.format import LedgerError
from ledger.reader import LedgerReader
from ledger.state import ConfigRules, apply_block, config_history, rules_of
from pbft_tasks.batch_verify import BatchVerifier, Signed
from pbft_tasks.core.chain import GENESIS
from pbft_tasks.core.config import ConfigRefused, Configuration, from_dict
from pbft_tasks.core.messages import (CONFIG_KEY, Commit, MalformedMessage, Request, from_wire,
                                      signing_bytes)
from pbft_tasks.core.quorum import quorum
from pbft_tasks.signing import verify_key_from_hex
from pbft_tasks.topology import LEDGER_FILE, ConfigError, MeshConfig, console_writers

from ..clikit import BadInput, console

WINDOW = 50_000   # signatures verified per BatchVerifier call (bounds memory)


class BadBlock(Exception):
    """The first thing wrong with a ledger: ``seq`` (None for a non-block row) and why."""

    def __init__(self, seq: Optional[int], reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"block {seq}: {reason}" if seq is not None else reason)


@dataclass
class NodeAudit:
    node: int
    path: str
    ok: bool = False
    blocks: int = 0
    requests: int = 0
    signatures: int = 0
    kv_records: int = 0
    seconds: float = 0.0
    bad_block: Optional[int] = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def signatures_per_s(self) -> float:
        return self.signatures / self.seconds if self.seconds > 0 else 0.0


def _strip(seq: int, exc: Exception) -> str:
    """``str(exc)`` without a leading ``block <n>: `` (we name the block ourselves)."""
    text = str(exc)
    for prefix in (f"block {seq}: ", "block ?: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text.split(": ", 1)[1] if text.startswith("block ") and ": " in text else text


class LedgerAudit:
    """Audits one ledger file against the mesh's keys (see the module docstring)."""

    def __init__(self, cfg: MeshConfig, verifier: BatchVerifier, window: int = WINDOW) -> None:
        self.rules = cfg.config_rules()
        self.writers = console_writers(cfg)
        self.verifier = verifier
        self.window = window

    def run(self, node: int, path: str) -> NodeAudit:
        result = NodeAudit(node, path)
        t0 = time.perf_counter()
        try:
            self._audit(path, result)
            result.ok = True
        except BadBlock as exc:
            result.bad_block, result.reason = exc.seq, str(exc)
        result.seconds = time.perf_counter() - t0
        return result

    # -- the walk ----------------------------------------------------------------------
    def _audit(self, path: str, result: NodeAudit) -> None:
        state: dict[str, dict] = {}
        try:
            reader = LedgerReader(path)
        except LedgerError as exc:
            raise BadBlock(None, f"cannot open ledger: {exc}") from None
        with reader:
            height, head = 0, GENESIS
            window = _Window()
            try:
                rules = self._rules(reader.genesis_record(), result)
                for block in reader.iter_blocks():
                    expected = height + 1
                    seq = block.get("seq") if isinstance(block, dict) else None
                    if seq != expected:
                        raise self._misplaced(reader, expected, seq)
                    try:
                        check_block(block, height, head)
                        in_force = config_history(state.get(CONFIG_KEY), rules).at(expected)
                        items = (self._certificate(block, in_force)
                                 + self._requests(block, in_force))
                        writes, _ = apply_block(state.get, block, self.writers, rules)
                    except LedgerError as exc:
                        raise BadBlock(expected, _strip(expected, exc)) from None
                    state.update(writes)
                    window.add(expected, items)
                    result.blocks += 1
                    result.requests += len(block["requests"])
                    height, head = expected, block["hash"]
                    if len(window.items) >= self.window:
                        result.signatures += self._flush(window)
            except fmt.LedgerFormatError as exc:   # a row that is not JSON any more
                raise BadBlock(height + 1, f"stored row does not decode: {exc}") from None
            result.signatures += self._flush(window)
            grew = self._check_head(reader, height, head, result)
        result.kv_records = self._check_rows(path, state, height, grew)

    def _misplaced(self, reader: LedgerReader, expected: int, seq: Any) -> BadBlock:
        at = reader.block(expected)
        if at is None:
            return BadBlock(expected, f"missing (the next stored block is {seq})")
        return BadBlock(expected, f"stored at seq {expected} but says seq {seq!r}")

    def _rules(self, record: Optional[dict], result: NodeAudit) -> ConfigRules:
        """The genesis the ledger is bound to, else mesh.json's."""
        if record is None:
            return self.rules
        try:
            stored = from_dict(record["config"])
        except (ConfigRefused, KeyError, TypeError) as exc:
            raise BadBlock(None, f"the genesis record does not decode: {exc}") from None
        if stored.hash != record.get("hash"):
            raise BadBlock(None, "the genesis record's hash is not that of its configuration")
        if stored.hash != self.rules.genesis.hash:
            result.notes.append(f"bound to genesis {stored.hash[:16]}, mesh.json's is "
                                f"{self.rules.genesis.hash[:16]} (mesh.json edited since)")
        return rules_of(record, self.rules.verify)

    def _certificate(self, block: dict, cfg: Configuration) -> list[Signed]:
        cert = block.get("certificate")
        if not isinstance(cert, list):
            raise LedgerError("has no commit certificate")
        commits, senders = [], set()
        for i, wire in enumerate(cert):
            try:
                msg = from_wire(wire)
            except MalformedMessage as exc:
                raise LedgerError(f"certificate[{i}] is malformed: {exc}") from None
            if not isinstance(msg, Commit):
                raise LedgerError(f"certificate[{i}] is a {type(msg).__name__}, not a Commit")
            if not 0 <= msg.sender < cfg.n:
                raise LedgerError(f"certificate[{i}] is from unknown node {msg.sender} "
                                  f"(configuration version {cfg.version} has n={cfg.n})")
            if msg.sender in senders:
                raise LedgerError(f"certificate has two commits from node {msg.sender}")
            if (msg.view, msg.seq, msg.digest) != (block["view"], block["seq"], block["digest"]):
                raise LedgerError(f"certificate[{i}] (node {msg.sender}) is for view {msg.view} "
                                  f"seq {msg.seq} digest {msg.digest[:12]}, not this block")
            senders.add(msg.sender)
            commits.append(_Item(bytes.fromhex(cfg.validator_keys()[msg.sender]),
                                 signing_bytes(msg), msg.sig, msg))
        need = quorum(cfg.n)
        if len(commits) < need:
            raise LedgerError(f"certificate has {len(commits)} commits, needs {need} "
                              f"(2f+1 of n={cfg.n})")
        return commits

    def _requests(self, block: dict, cfg: Configuration) -> list[Signed]:
        out = []
        for i, wire in enumerate(block["requests"]):
            try:
                msg = from_wire(wire)
            except MalformedMessage as exc:
                raise LedgerError(f"request {i} is malformed: {exc}") from None
            if not isinstance(msg, Request):
                raise LedgerError(f"request {i} is a {type(msg).__name__}")
            key = cfg.client_key(msg.client.partition("/")[0])
            if key is None:
                raise LedgerError(f"request {i} (client {msg.client!r}): unknown client "
                                  f"(not in configuration version {cfg.version})")
            out.append(_Item(bytes.fromhex(key), signing_bytes(msg), msg.sig, msg))
        return out

    def _flush(self, window: "_Window") -> int:
        """Verify the window's signatures; BadBlock for the first block with a bad one."""
        items, count = window.items, len(window.items)
        if not items:
            return 0
        failures = self.verifier.verify([Signed(it.key, it.data, _sig_bytes(it.sig))
                                         for it in items])
        if failures:
            i, reason = failures[0]
            k = bisect.bisect_right(window.starts, i) - 1
            msg = items[i].msg
            who = (f"commit from node {msg.sender}" if isinstance(msg, Commit)
                   else f"request {i - window.starts[k] - window.cert_sizes[k]} "
                        f"(client {msg.client!r})")
            raise BadBlock(window.seqs[k], f"{who}: {reason.replace('_', ' ')}")
        window.clear()
        return count

    def _check_head(self, reader: LedgerReader, height: int, head: str,
                    result: NodeAudit) -> bool:
        """m/head against the walked chain; True if the ledger grew meanwhile."""
        rec_height, rec_head = reader.height(), reader.head()
        if rec_height < height:
            raise BadBlock(rec_height + 1, f"stored beyond the head record (height {rec_height})")
        if rec_height == height:
            if rec_head != head:
                raise BadBlock(height, f"m/head names hash {str(rec_head)[:16]}..., "
                                       f"the chain ends in {head[:16]}...")
            return False
        if reader.block(height + 1) is None:
            raise BadBlock(height + 1, f"missing (the head record says height {rec_height})")
        result.notes.append(f"the ledger grew during the audit; audited up to block {height}")
        return True

    def _check_rows(self, path: str, state: dict[str, dict], height: int, grew: bool) -> int:
        """kv/ rows against the replayed state, p/ and m/ rows decodable; the count of kv/."""
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        seen, kv = set(), 0
        try:
            rows = conn.execute(f'SELECT key, value FROM "{fmt.TABLE}" '
                                f'WHERE key NOT LIKE ? ORDER BY key', (fmt.BLOCK_PREFIX + "%",))
            for key, raw in rows:
                try:
                    value = fmt.decode(raw)
                except fmt.LedgerFormatError as exc:
                    raise BadBlock(_block_of(state, key), f"row {key!r} does not decode: {exc}") from None
                if key.startswith(fmt.KV_PREFIX):
                    kv += 1
                    name = key[len(fmt.KV_PREFIX):]
                    seen.add(name)
                    self._check_kv(name, value, state.get(name), height if grew else None)
                elif key.startswith(fmt.PROTOCOL_PREFIX) or key in (fmt.HEAD_KEY, fmt.FORMAT_KEY,
                                                                    fmt.GENESIS_KEY):
                    continue
                else:
                    raise BadBlock(None, f"unexpected row {key!r} in the ledger")
        finally:
            conn.close()
        missing = sorted(set(state) - seen, key=lambda k: (state[k]["block"], k))
        if missing:
            name = missing[0]
            raise BadBlock(state[name]["block"], f"kv record {name!r} is missing "
                                                 f"(replaying the chain writes it)")
        return kv

    @staticmethod
    def _check_kv(name: str, stored: Any, replayed: Optional[dict],
                  live_height: Optional[int]) -> None:
        """``live_height``: the audited height if the ledger grew during the audit."""
        if stored == replayed:
            return
        written = stored.get("block") if isinstance(stored, dict) else None
        if live_height is not None and type(written) is int and written > live_height:
            return   # written by a block appended after our snapshot of the chain
        seq = replayed["block"] if replayed is not None else written if type(written) is int else None
        raise BadBlock(seq, f"kv record {name!r} differs from replaying the chain "
                            f"(stored {json.dumps(stored)[:80]}, replayed {json.dumps(replayed)[:80]})")


def _block_of(state: dict[str, dict], key: str) -> Optional[int]:
    if key.startswith(fmt.KV_PREFIX) and key[len(fmt.KV_PREFIX):] in state:
        return state[key[len(fmt.KV_PREFIX):]]["block"]
    return None


@dataclass(frozen=True)
class _Item:
    """One signature of a block, with the key in force at its seq and its message."""
    key: bytes
    data: bytes
    sig: str
    msg: Any


def _sig_bytes(sig: str) -> bytes:
    """A signature as bytes; a malformed one as 64 zero bytes, which never verifies."""
    try:
        raw = bytes.fromhex(sig)
    except (ValueError, TypeError):
        return bytes(64)
    return raw if len(raw) == 64 else bytes(64)


class _Window:
    """Signatures of consecutive blocks waiting to be verified in one batch."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.items: list = []
        self.starts: list[int] = []
        self.seqs: list[int] = []
        self.cert_sizes: list[int] = []

    def add(self, seq: int, items: list) -> None:
        self.starts.append(len(self.items))
        self.seqs.append(seq)
        self.cert_sizes.append(sum(isinstance(m.msg, Commit) for m in items))
        self.items.extend(items)


# -- command line ------------------------------------------------------------------------

def _load_config(config: Optional[str], data_dir: Optional[Path]) -> MeshConfig:
    candidates = [config] if config else [
        *(str(p) for p in ([data_dir / "mesh.json", data_dir.parent / "mesh.json"]
                           if data_dir else [])),
        os.environ.get("HDPBF_CONFIG") or "", "mesh.json"]
    for path in candidates:
        if path and os.path.isdir(path):
            path = os.path.join(path, "mesh.json")
        if path and os.path.isfile(path):
            try:
                return MeshConfig.load(path)
            except ConfigError as exc:
                raise BadInput(str(exc)) from None
    raise BadInput(f"no mesh configuration found (tried {', '.join(p for p in candidates if p)}): "
                   f"pass --config PATH/mesh.json, which holds the public keys to check against")


def _ledgers(cfg: MeshConfig, data_dir: Optional[Path], node: Optional[int]) -> list[tuple[int, str]]:
    if data_dir is not None and (data_dir / "mesh.json").is_file():
        data_dir = None          # the mesh directory itself: use its data_dir
    ids = [n.id for n in cfg.nodes]
    if node is not None and node not in ids:
        raise BadInput(f"node {node} is not in {cfg.path} (nodes: {ids})")
    out = []
    for i in ids if node is None else [node]:
        base = data_dir / f"node{i}" if data_dir is not None else cfg.node_data_dir(i)
        path = base / LEDGER_FILE
        if path.is_file():
            out.append((i, str(path)))
        elif node is not None:
            raise BadInput(f"node {i} has no ledger at {path}")
    if not out:
        where = data_dir if data_dir is not None else cfg.data_path
        raise BadInput(f"no ledger under {where} (expected node<ID>/{LEDGER_FILE})")
    return out


def _follower_ledgers(cfg: MeshConfig, names: tuple[str, ...]) -> list[tuple[Any, str]]:
    out = []
    for name in names:
        try:
            path = cfg.follower_data_dir(name) / LEDGER_FILE
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        if not path.is_file():
            raise BadInput(f"follower {name} has no ledger at {path}")
        out.append((f"follower {name}", str(path)))
    return out


@click.command("verify")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory holding node<ID>/ledger.sqlite (default: the mesh's data_dir)")
@click.option("--node", "node_id", type=int, default=None, help="audit only this node's ledger")
@click.option("--follower", "followers", multiple=True, metavar="NAME",
              help="audit this follower's ledger instead (repeatable)")
@click.option("--config", metavar="PATH",
              help="mesh.json with the public keys (default: DATA_DIR/mesh.json, "
                   "DATA_DIR/../mesh.json, $HDPBF_CONFIG, ./mesh.json)")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="verify signatures on this Ray cluster (default: threads in this process)")
@click.option("--num-cpus", type=click.IntRange(1, 1024), default=None,
              help="CPUs for a local Ray, if a batch is big enough to start one")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify(data_dir: Optional[Path], node_id: Optional[int], followers: tuple[str, ...],
           config: Optional[str], ray_address: Optional[str], num_cpus: Optional[int],
           as_json: bool) -> None:
    """Audit ledgers: hash links, batch digests, commit certificates, every signature and
    the replayed key/value state. Exit 1 naming the first bad block."""
    cfg = _load_config(config, data_dir)
    ledgers = (_follower_ledgers(cfg, followers) if followers
               else _ledgers(cfg, data_dir, node_id))
    temp = Path(ledgers[0][1]).parent.parent / "ray"
    bv = BatchVerifier({n.id: verify_key_from_hex(n.public_key) for n in cfg.nodes},
                       {c.name: verify_key_from_hex(c.public_key) for c in cfg.clients},
                       ray_address=ray_address, num_cpus=num_cpus, temp_dir=temp)
    try:
        audit = LedgerAudit(cfg, bv)
        results = [audit.run(i, path) for i, path in ledgers]
    finally:
        bv.close()
    total_sigs = sum(r.signatures for r in results)
    total_s = sum(r.seconds for r in results)
    ok = all(r.ok for r in results)
    if as_json:
        click.echo(json.dumps({
            "ok": ok, "signatures": total_sigs, "seconds": round(total_s, 3),
            "signatures_per_s": round(total_sigs / total_s, 1) if total_s else 0.0,
            "ray_start_s": bv.ray_start_s,
            "nodes": [dict(asdict(r), seconds=round(r.seconds, 3),
                           signatures_per_s=round(r.signatures_per_s, 1)) for r in results]},
            indent=2))
    else:
        out = console()
        table = Table(title=f"ledger audit, n={cfg.n} (certificates need {quorum(cfg.n)} commits)")
        for col, just in (("node", "right"), ("blocks", "right"), ("requests", "right"),
                          ("signatures", "right"), ("sig/s", "right"), ("kv", "right"),
                          ("result", "left")):
            table.add_column(col, justify=just)
        for r in results:
            verdict = "[green]intact[/green]" if r.ok else f"[red]{r.reason}[/red]"
            table.add_row(str(r.node), str(r.blocks), str(r.requests), str(r.signatures),
                          f"{r.signatures_per_s:,.0f}", str(r.kv_records), verdict)
        out.print(table)
        for r in results:
            for note in r.notes:
                out.print(f"node {r.node}: {note}")
        if ok:
            out.print(f"{len(results)} ledger(s) intact: {sum(r.blocks for r in results)} blocks, "
                      f"{total_sigs} signatures checked at "
                      f"{total_sigs / total_s if total_s else 0:,.0f}/s")
        else:
            for r in results:
                if not r.ok:
                    out.print(f"[red]node {r.node}: FIRST BAD {r.reason}[/red]", soft_wrap=True)
    if not ok:
        sys.exit(1)


@click.command("verify")
@click.option("--signatures", type=click.IntRange(1000, 10_000_000), default=100_000,
              show_default=True)
@click.option("--ray-address", default=None, metavar="ADDR",
              help="a running Ray cluster (default: a local Ray, num_cpus = this machine's)")
@click.option("--num-cpus", type=click.IntRange(1, 1024), default=None)
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="runs per path; the best counts")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_verify(signatures: int, ray_address: Optional[str], num_cpus: Optional[int],
                 repeat: int, json_path: Optional[str]) -> None:
    """Ed25519 checks per second: serial vs threads vs Ray, in the same run."""
    import tempfile

    from pbft_tasks import batch_verify
    out = console()
    out.print(f"signing {signatures} messages, then verifying them three ways ...")
    with tempfile.TemporaryDirectory(prefix="hdpbf-ray-") as tmp:
        r = batch_verify.measure(signatures, ray_address=ray_address, num_cpus=num_cpus,
                                 temp_dir=tmp, repeat=repeat)
    table = Table(title=f"{signatures} Ed25519 checks, {r['cpus']} CPUs, Ray {r['ray_address']}")
    for col in ("path", "signatures/s", "vs serial"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row("serial (one thread)", f"{r['serial_per_s']:,.0f}", "1.00x")
    table.add_row(f"threads ({r['threads']})", f"{r['threads_per_s']:,.0f}", f"{r['threads_vs_serial']:.2f}x")
    table.add_row("Ray (warm)", f"{r['ray_per_s']:,.0f}", f"{r['ray_vs_serial']:.2f}x")
    out.print(table)
    out.print(f"Ray start-up (init + first tasks), not in the rate above: {r['ray_start_s']:.2f} s; "
              f"Ray vs threads {r['ray_vs_threads']:.2f}x; load average "
              f"{r['load_avg_before']:.2f} before, {r['load_avg_after']:.2f} after (2 cores: "
              f"above ~1 something else was using them)")
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=2) + "\n")
