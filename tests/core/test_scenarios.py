"""Scenario scripts for the core, in the style of etcd's datadriven interaction tests.

Each file in ``scenarios/`` is a list of blocks separated by blank lines.  A block is
optional ``#`` comment lines, one command line, a ``----`` line and the expected output
(one or more lines, never blank).  The runner executes every command against a
``sim.Cluster`` and compares the whole file with the file it would write; run with
``REWRITE=1`` to rewrite the expectations in place (like datadriven's -rewrite), then
read the diff before committing it.

Commands (``ID`` is a replica number; filters are optional):
  add-replicas N [checkpoint=K] [window=L] [batch=B] [timeout=T] [retransmit=R]
               [viewchange=V] [votes=all-to-all|collector]
                                   a fresh cluster of N replicas
  request client=C ts=T [to=ID] KEY=VALUE
                                   a client request (to the primary unless to=)
  deliver [type=T] [from=ID] [to=ID] [drop=K]
                                   deliver every queued message that matches (only
                                   those queued when the command starts), or drop the
                                   first K that match
  duplicate [type=T] [from=ID] [to=ID]
                                   queue a second copy of each matching message
  reorder [seed=S]                 reverse the queue, or shuffle it with seed S
  net [type=T] [from=ID] [to=ID]   list the queued messages
  tick [N]                         N ticks on every live replica
  stabilize                        deliver FIFO until nothing deliverable is queued
  crash ID [lose-queue]            ID loses its volatile state (and its queue)
  restart ID                       ID restarts from its persisted records
  byzantine ID                     ID becomes Byzantine: it only says what we inject
  inject from=ID to=ID|all TYPE seq=S [view=V] [digest=WORD] [client=C ts=T KEY=VALUE]
         [phase=prepare|commit voters=ID,ID]
                                   a message in ID's name; TYPE is PrePrepare, Prepare,
                                   Commit, Checkpoint or Certificate; digest=WORD is
                                   sha256(WORD), a pre-prepare's batch is its one
                                   request, a certificate carries votes of ``voters``
  ledger [ID]                      height and head prefix of each (or one) replica
  log ID                           watermarks, last executed seq and the seqs in its log
  evidence ID                      the evidence ID has recorded, as "from=S reason"
  replies client=C                 the replies C received: timestamp, result, senders
  views                            each replica's view, and "changing" while it waits
                                   for a NEW-VIEW
  fetch                            serve the state-transfer requests made so far
                                   (Cluster.serve_fetches): blocks installed
"""
from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict
from pathlib import Path

import pytest

from pbft_tasks.core.messages import (Certificate, Checkpoint, Commit, NewView, PrePrepare, Prepare,
                                      Request, ViewChange, batch_digest)
from pbft_tasks.core.sim import Cluster

HERE = Path(__file__).parent / "scenarios"
FILES = sorted(HERE.glob("*.txt"))
REWRITE = os.environ.get("REWRITE") == "1"


class ScriptError(Exception):
    pass


def parse_blocks(text: str) -> list[tuple[list[str], str, list[str]]]:
    """[(comment lines, command, expected lines)]"""
    blocks = []
    for chunk in text.strip("\n").split("\n\n"):
        lines = [ln for ln in chunk.split("\n")]
        if not any(ln.strip() for ln in lines):
            continue
        try:
            sep = lines.index("----")
        except ValueError:
            raise ScriptError(f"block without '----':\n{chunk}") from None
        head = lines[:sep]
        comments = [ln for ln in head if ln.startswith("#")]
        commands = [ln for ln in head if not ln.startswith("#")]
        if len(commands) != 1:
            raise ScriptError(f"a block needs exactly one command:\n{chunk}")
        blocks.append((comments, commands[0], lines[sep + 1:]))
    return blocks


def render(blocks: list[tuple[list[str], str, list[str]]]) -> str:
    return "\n\n".join("\n".join(c + [cmd, "----"] + out) for c, cmd, out in blocks) + "\n"


def fake_digest(word: str) -> str:
    return hashlib.sha256(word.encode()).hexdigest()


def describe(env) -> str:
    m = env.msg
    kind = type(m).__name__
    if isinstance(m, Request):
        body = f"{m.client}/{m.timestamp}"
    elif isinstance(m, PrePrepare):
        body = f"v{m.view} n{m.seq} d={m.digest[:8]} batch={len(m.batch)}"
    elif isinstance(m, (Prepare, Commit)):
        body = f"v{m.view} n{m.seq} d={m.digest[:8]}"
    elif isinstance(m, Checkpoint):
        body = f"n{m.seq} d={m.state_digest[:8]}"
    elif isinstance(m, Certificate):
        body = f"{m.phase} v{m.view} n{m.seq} d={m.digest[:8]} votes={','.join(str(v.sender) for v in m.votes)}"
    elif isinstance(m, ViewChange):
        body = f"v{m.new_view} stable=n{m.stable_seq} P={[pp.seq for pp, _ in m.prepared]}"
    elif isinstance(m, NewView):
        body = f"v{m.view} V={sorted(vc.sender for vc in m.view_changes)} " \
               f"O={[(pp.seq, len(pp.batch)) for pp in m.preprepares]}"
    else:
        body = ""
    return f"{env.origin}->{env.to} {kind} {body}".rstrip()


class Runner:
    def __init__(self) -> None:
        self.c: Cluster | None = None

    # -- parsing -----------------------------------------------------------------
    @staticmethod
    def split(line: str) -> tuple[str, list[str], dict[str, str]]:
        words = line.split()
        cmd, pos, kw = words[0], [], {}
        for w in words[1:]:
            if "=" in w:
                k, v = w.split("=", 1)
                kw[k] = v
            else:
                pos.append(w)
        return cmd, pos, kw

    def run(self, line: str) -> list[str]:
        cmd, pos, kw = self.split(line)
        fn = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if fn is None:
            raise ScriptError(f"unknown command {cmd!r}")
        if cmd != "add-replicas" and self.c is None:
            raise ScriptError("add-replicas first")
        out = fn(pos, kw)
        return out or ["ok"]

    def matching(self, kw: dict[str, str]) -> list:
        def ok(e) -> bool:
            return (("type" not in kw or type(e.msg).__name__ == kw["type"])
                    and ("from" not in kw or str(e.origin) == kw["from"])
                    and ("to" not in kw or e.to == int(kw["to"])))
        return [e for e in self.c.network if ok(e)]

    # -- commands ------------------------------------------------------------------
    def cmd_add_replicas(self, pos, kw):
        names = {"checkpoint": "checkpoint_interval", "window": "log_window",
                 "batch": "max_batch", "timeout": "batch_timeout_ticks",
                 "retransmit": "retransmit_ticks", "viewchange": "view_change_ticks"}
        cfg: dict = {names[k]: int(v) for k, v in kw.items() if k != "votes"}
        if "votes" in kw:
            cfg["votes"] = kw["votes"]
        self.c = Cluster(int(pos[0]), **cfg)

    def _request(self, kw) -> Request:
        client, ts = kw.pop("client"), int(kw.pop("ts"))
        kw.pop("to", None)
        ((key, value),) = kw.items()
        return Request(client, ts, {"op": "put", "key": key, "value": value, "expires_at": None})

    def cmd_request(self, pos, kw):
        to = int(kw["to"]) if "to" in kw else None
        r = self._request(dict(kw))
        self.c.request(r.client, r.timestamp, r.op["key"], r.op["value"], to=to)

    def cmd_deliver(self, pos, kw):
        envs = [e for e in self.matching(kw) if self.c.nodes[e.to].up]
        if "drop" in kw:
            gone = envs[: int(kw["drop"])]
            for e in gone:
                self.c.network.remove(e)
            return [f"dropped {describe(e)}" for e in gone] or ["dropped nothing"]
        for e in envs:
            self.c.deliver(next(k for k, x in enumerate(self.c.network) if x is e))
        return [f"delivered {len(envs)}"]

    def cmd_duplicate(self, pos, kw):
        envs = self.matching(kw)
        self.c.network.extend(envs)
        return [f"duplicated {len(envs)}"]

    def cmd_reorder(self, pos, kw):
        if "seed" in kw:
            random.Random(int(kw["seed"])).shuffle(self.c.network)
        else:
            self.c.network.reverse()

    def cmd_net(self, pos, kw):
        return [describe(e) for e in self.matching(kw)] or ["(empty)"]

    def cmd_tick(self, pos, kw):
        self.c.tick(int(pos[0]) if pos else 1)

    def cmd_stabilize(self, pos, kw):
        return [f"delivered {self.c.stabilize()}"]

    def cmd_crash(self, pos, kw):
        self.c.crash(int(pos[0]), lose_queue="lose-queue" in pos[1:])

    def cmd_restart(self, pos, kw):
        self.c.restart(int(pos[0]))

    def cmd_byzantine(self, pos, kw):
        self.c.byzantine.add(int(pos[0]))

    def cmd_inject(self, pos, kw):
        kw = dict(kw)
        sender = int(kw.pop("from"))
        to = kw.pop("to")
        seq, view = int(kw.pop("seq")), int(kw.pop("view", 0))
        word = kw.pop("digest", None)
        (kind,) = pos
        if kind == "PrePrepare":
            batch = (self._request(kw),)
            msg = PrePrepare(view, seq, fake_digest(word) if word else batch_digest(batch),
                             batch, sender)
        elif kind in ("Prepare", "Commit"):
            cls = Prepare if kind == "Prepare" else Commit
            msg = cls(view, seq, fake_digest(word or "x"), sender)
        elif kind == "Checkpoint":
            msg = Checkpoint(seq, fake_digest(word or "x"), sender)
        elif kind == "Certificate":
            phase = kw.pop("phase")
            cls = Prepare if phase == "prepare" else Commit
            d = fake_digest(word or "x")
            voters = [int(v) for v in kw.pop("voters").split(",")]
            msg = Certificate(view, seq, d, phase, tuple(cls(view, seq, d, v) for v in voters), sender)
        else:
            raise ScriptError(f"cannot inject {kind}")
        targets = [i for i in range(len(self.c.nodes)) if i != sender] if to == "all" \
            else [int(t) for t in to.split(",")]
        for t in targets:
            self.c.inject(t, msg, origin=sender)

    def cmd_ledger(self, pos, kw):
        ids = [int(pos[0])] if pos else range(len(self.c.nodes))
        return [f"{i}: height={self.c.height(i)} head={self.c.head(i)[:12]}" for i in ids]

    def cmd_log(self, pos, kw):
        i = int(pos[0])
        r = self.c.nodes[i].replica
        if r is None:
            return [f"{i}: down"]
        seqs = " ".join(str(s) for s in sorted(r.window.log)) or "(none)"
        return [f"h={r.window.h} H={r.window.high} executed={r.last_exec}", f"seqs: {seqs}"]

    def cmd_evidence(self, pos, kw):
        ev = self.c.nodes[int(pos[0])].evidence
        return [f"from={e.sender} {e.reason}" for e in ev] or ["(none)"]

    def cmd_replies(self, pos, kw):
        got: dict[tuple, set] = defaultdict(set)
        for rep in self.c.replies[kw["client"]]:
            for r in rep.results:
                res = r["result"]
                got[(r["timestamp"], res["seq"], res["index"])].add(rep.sender)
        return [f"ts={ts} seq={s} index={ix} from={sorted(senders)}"
                for (ts, s, ix), senders in sorted(got.items())] or ["(none)"]


    def cmd_views(self, pos, kw):
        out = []
        for i, node in enumerate(self.c.nodes):
            r = node.replica
            out.append(f"{i}: down" if r is None else
                       f"{i}: view={r.view}{' changing' if r.vc.in_view_change else ''}")
        return out

    def cmd_fetch(self, pos, kw):
        return [f"installed {self.c.serve_fetches()}"]


def run_file(path: Path) -> str:
    text = path.read_text()
    runner = Runner()
    out = []
    for comments, cmd, _ in parse_blocks(text):
        try:
            actual = runner.run(cmd)
        except ScriptError as exc:
            raise ScriptError(f"{path.name}: {cmd}: {exc}") from None
        out.append((comments, cmd, actual))
    return render(out)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path):
    expected = path.read_text()
    actual = run_file(path)
    if REWRITE and actual != expected:
        path.write_text(actual)
        return
    assert actual == expected


def test_scenarios_exist():
    assert len(FILES) >= 6


def test_parse_and_render_round_trip():
    text = "# c\nadd-replicas 4\n----\nok\n\nledger\n----\n0: x\n1: y\n"
    assert render(parse_blocks(text)) == text
