"""``hdpbf keygen`` and ``hdpbf config propose|sign|submit|show``: membership changes.

Owns: the operator's side of configuration changes (pbft_tasks/core/config.py): making a
key on the host that will use it, writing a proposal file built on the newest accepted
configuration, collecting admin signatures in it, ordering it through consensus, and
showing the configuration a node's ledger holds.

Rules of this file:
- Only public keys travel: ``keygen`` writes the private key (mode 0600) and prints the
  public one, which the operator passes to ``config propose``.
- A proposal file is ``{"change": <the change>, "admins": {name: key}, "threshold": k}``:
  the admins and policy of the configuration it was built on, so ``config sign`` finds
  the signer's name by its key without a ledger.  Only ``change`` is submitted.
- The newest configuration is read from a node's local ledger (``--node``, default 0);
  a ledger that holds no change yet means the genesis configuration (mesh.json's).
- Bad input (a malformed NAME=KEY, an unknown admin key, too few signatures to submit)
  is one ``Error:`` line and exit code 2; a refused change is exit code 1 with its reason.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import click
from nacl.public import PrivateKey
from rich.table import Table

from ledger import LedgerError, LedgerReader
from ledger.state import ConfigRules, config_history, rules_of
from pbft_tasks.core import config as C
from pbft_tasks.core.messages import CONFIG_KEY
from pbft_tasks.signing import (KeyFileError, atomic_write, generate_key, public_key_hex, read_key_file,
                                sign_hex, write_key_file)
from pbft_tasks.topology import LEDGER_FILE, ConfigError, MeshConfig

from ..clikit import BadInput, broker_client, config_option, config_path, console


# -- keygen --------------------------------------------------------------------------------
@click.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the private key (mode 0600; refused if it exists)")
@click.option("--kind", type=click.Choice(["ed25519", "x25519"]), default="ed25519", show_default=True,
              help="ed25519 for a validator, client or admin; x25519 for an API reader")
def keygen(out: Path, kind: str) -> None:
    """Make a key on this host: write it to --out and print its public key."""
    if out.exists():
        raise BadInput(f"{out} exists; keygen never overwrites a key")
    try:
        if kind == "ed25519":
            key = generate_key()
            write_key_file(out, key)
            pub = public_key_hex(key)
        else:
            xkey = PrivateKey.generate()
            atomic_write(out, (bytes(xkey).hex() + "\n").encode("ascii"), 0o600)
            pub = bytes(xkey.public_key).hex()
    except OSError as exc:
        raise BadInput(f"cannot write {out}: {exc}") from None
    click.echo(pub)


# -- reading the configuration -------------------------------------------------------------
def current_history(cfg: MeshConfig, node_id: int) -> tuple[C.ConfigHistory, int, ConfigRules]:
    """The configuration history in node ``node_id``'s ledger, that ledger's height and
    the rules it executes changes by (genesis and 0 when it has no ledger yet)."""
    try:
        path = os.path.join(cfg.node_data_dir(node_id), LEDGER_FILE)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    rules = cfg.config_rules()
    if not os.path.exists(path):
        return rules.new_history(), 0, rules
    try:
        with LedgerReader(path) as reader:
            record, height, genesis = reader.get_record(CONFIG_KEY), reader.height(), reader.genesis_record()
    except LedgerError as exc:
        raise BadInput(f"node {node_id}: {exc}") from None
    if genesis is not None:
        rules = rules_of(genesis, rules.verify)
    return config_history(record, rules), height, rules


# -- propose -------------------------------------------------------------------------------
def _pair(text: str, what: str, int_id: bool = False) -> tuple[Any, str]:
    who, sep, key = text.partition("=")
    if not sep or not who or not key:
        raise BadInput(f"{what} takes NAME=PUBLIC_KEY (64 hex chars from hdpbf keygen), got {text!r}")
    return (_int_id(who) if int_id else who), key.strip().lower()


def _int_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"a validator is named by its integer id, got {text!r}") from None


_PAIRED = ("add_client", "rotate_client", "add_reader", "rotate_reader", "add_validator",
           "rotate_validator", "add_admin", "rotate_admin")
_NAMED = ("remove_client", "remove_reader", "add_follower", "remove_follower", "remove_validator",
          "remove_admin")


def _change_options(f):
    for op in reversed(_PAIRED + _NAMED):
        flag = "--" + op.replace("_", "-")
        meta = ("ID=PUBKEY" if "validator" in op else "NAME=PUBKEY") if op in _PAIRED else \
            ("ID" if "validator" in op else "NAME")
        f = click.option(flag, op, multiple=True, metavar=meta, help=op.replace("_", " ") + " (repeatable)")(f)
    return f


@click.group("config")
def config_group() -> None:
    """Membership and keys: propose, sign, submit and show configuration changes."""


@config_group.command("propose")
@_change_options
@click.option("--threshold", type=int, default=None, help="set the admin policy to K of the admins")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the proposal file to write (P.json)")
@click.option("--node", "node_id", type=int, default=0, show_default=True,
              help="read the newest configuration from this node's local ledger")
@config_option
def propose(out: Path, threshold: Optional[int], node_id: int, config: Optional[str], **ops) -> None:
    """Write an unsigned change of the newest configuration to --out."""
    cfg = MeshConfig.load(config_path(config))
    history, _, rules = current_history(cfg, node_id)
    built: list[dict] = []
    for op in _PAIRED + _NAMED:
        for text in ops[op]:
            field = "id" if "validator" in op else "name"
            if op in _PAIRED:
                who, key = _pair(text, "--" + op.replace("_", "-"), field == "id")
                built.append({"op": op, field: who, "key": key})
            else:
                built.append({"op": op, field: _int_id(text) if field == "id" else text})
    if threshold is not None:
        built.append({"op": "set_threshold", "threshold": threshold})
    if not built:
        raise BadInput("nothing to change: give at least one --add-*/--remove-*/--rotate-* or --threshold")
    latest = history.latest
    change = C.proposal(latest, built)
    if not latest.admins:
        raise BadInput("this mesh has no admins (hdpbf init --admin NAME): no change can pass")
    try:  # refuse here what the mesh would refuse anyway (signatures aside)
        if not rules.validator_changes and any("validator" in op["op"] for op in built):
            raise C.ConfigRefused("config_unsupported", "this mesh does not change its "
                                  "validators yet (docs/operations/membership.md)")
        C.apply_ops(latest, built)
    except C.ConfigRefused as exc:
        raise BadInput(f"this change would be refused: {exc}") from None
    doc = {"change": change, "admins": dict(latest.admins), "threshold": latest.threshold}
    _write(out, doc)
    console().print(f"proposal on configuration version {latest.version} written to {out}; "
                    f"it needs {latest.threshold} of {len(latest.admins)} admin signatures "
                    f"(hdpbf config sign {out} --admin-key K)", soft_wrap=True)


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"no proposal at {path}") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is not a proposal file: {exc}") from None
    if (type(doc) is not dict or set(doc) != {"change", "admins", "threshold"}
            or type(doc["change"]) is not dict or type(doc["change"].get("sigs")) is not dict
            or type(doc["admins"]) is not dict):
        raise BadInput(f"{path} is not a proposal file (want change, admins, threshold; "
                       f"make one with hdpbf config propose)")
    return doc


def _write(path: Path, doc: dict) -> None:
    try:
        atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"), 0o644)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc}") from None


def _valid_sigs(doc: dict) -> list[str]:
    from pbft_tasks.signing import verify_hex
    data = C.change_bytes(doc["change"])
    return sorted(who for who, sig in doc["change"]["sigs"].items()
                  if who in doc["admins"] and type(sig) is str
                  and verify_hex(doc["admins"][who], data, sig))


# -- sign ----------------------------------------------------------------------------------
@config_group.command("sign")
@click.argument("proposal", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--admin-key", "admin_key", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="an admin's private key file")
def sign(proposal: Path, admin_key: Path) -> None:
    """Add an admin's signature to PROPOSAL."""
    doc = _read(proposal)
    try:
        key = read_key_file(admin_key)
    except (KeyFileError, OSError) as exc:
        raise BadInput(f"cannot use {admin_key}: {exc}") from None
    pub = public_key_hex(key)
    names = [n for n, k in doc["admins"].items() if k == pub]
    if not names:
        raise BadInput(f"{admin_key} is not the key of an admin of the configuration this "
                       f"proposal changes (admins: {', '.join(sorted(doc['admins'])) or 'none'})")
    doc["change"]["sigs"][names[0]] = sign_hex(key, C.change_bytes(doc["change"]))
    _write(proposal, doc)
    have = _valid_sigs(doc)
    console().print(f"signed as {names[0]}: {len(have)} of {doc['threshold']} signatures "
                    f"({', '.join(have)})")


# -- submit --------------------------------------------------------------------------------
@config_group.command("submit")
@click.argument("proposal", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--client", "name", default="admin", show_default=True,
              help="the client identity that sends the request")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the outcome as JSON")
@config_option
def submit(proposal: Path, name: str, timeout: float, as_json: bool, config: Optional[str]) -> None:
    """Order PROPOSAL through consensus; wait for its outcome and print the seq it takes
    effect at.  Exit 1 if the mesh refused it (stale, unauthorised, ...)."""
    from ..client import SubmitTimeout
    doc = _read(proposal)
    have = _valid_sigs(doc)
    if len(have) < doc["threshold"]:
        raise BadInput(f"{proposal} has {len(have)} valid admin signatures, the policy needs "
                       f"{doc['threshold']} (hdpbf config sign {proposal} --admin-key K)")
    client = broker_client(config_path(config), name, timeout=min(2.0, timeout))
    try:
        result = client.reconfigure(doc["change"], timeout=timeout)
    except SubmitTimeout as exc:
        console().print(f"[red]{exc}[/red]")
        sys.exit(1)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    report(result, as_json)


def report(result: dict, as_json: bool) -> None:
    """Print a change's outcome; exit 1 if it was refused."""
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    elif result.get("config") == "accepted":
        console().print(f"accepted: configuration version {result['version']}, committed at seq "
                        f"{result['executed']}, in force from seq {result['effective']}")
    else:
        console().print(f"[red]refused ({result.get('reason')}): {result.get('detail')}[/red]")
    if result.get("config") != "accepted":
        sys.exit(1)


# -- show ----------------------------------------------------------------------------------
@config_group.command("show")
@click.option("--node", "node_id", type=int, default=0, show_default=True,
              help="read this node's local ledger")
@click.option("--json", "as_json", is_flag=True, help="print everything as JSON")
@config_option
def show(node_id: int, as_json: bool, config: Optional[str]) -> None:
    """The configuration in force on a node, any change pending, refusals by reason."""
    cfg = MeshConfig.load(config_path(config))
    history, height, _ = current_history(cfg, node_id)
    in_force = history.at(height + 1)
    entries = history.entries()
    since = max(f for _, f, c in entries if c.version == in_force.version)
    pending = [{"version": c.version, "executed": e, "effective": f, "hash": c.hash}
               for e, f, c in entries if f > height + 1]
    doc = {"node": node_id, "height": height, "version": in_force.version, "hash": in_force.hash,
           "effective": since, "genesis": history.genesis.hash, "config": in_force.to_dict(),
           "pending": pending, "refused": dict(history.refused),
           "keys": history.key_ranges()}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
        return
    out = console()
    out.print(f"node {node_id} at seq {height}: configuration version {in_force.version} "
              f"(in force from seq {since}), n={in_force.n}, admins {in_force.threshold} of "
              f"{len(in_force.admins)}")
    table = Table()
    table.add_column("role")
    table.add_column("member")
    table.add_column("public key", overflow="fold")
    for i, k in in_force.validators:
        table.add_row("validator", str(i), k)
    for role in ("clients", "readers", "admins"):
        for who, k in getattr(in_force, role):
            table.add_row(role[:-1], who, k)
    for f in in_force.followers:
        table.add_row("follower", f, "")
    out.print(table)
    for p in pending:
        out.print(f"pending: version {p['version']} committed at seq {p['executed']}, "
                  f"in force from seq {p['effective']}")
    if history.refused:
        out.print("refused changes: " + ", ".join(f"{r} {c}" for r, c in sorted(history.refused.items())))
