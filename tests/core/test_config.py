"""The configuration history (pbft_tasks/core/config.py): genesis, signed changes,
refusals as counted no-ops, the boundary, and lookup of the configuration and the keys in
force at any seq, over thousands of random reconfiguration schedules."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pbft_tasks.core import config as C
from pbft_tasks.core import quorum as Q

K, L = 4, 8  # checkpoint interval and log window of these tests


def pub(secret: str) -> str:
    return hashlib.sha256(b"pub:" + secret.encode()).hexdigest()


SECRETS: dict[str, str] = {}


def sign(secret: str, data: bytes) -> str:
    SECRETS[pub(secret)] = secret
    return hashlib.sha256(secret.encode() + b"|" + data).hexdigest()


def verify(key: str, data: bytes, sig: str) -> bool:
    """A fake signature scheme (the core takes any verifier): only the secret behind
    ``key`` makes a signature that verifies."""
    secret = SECRETS.get(key)
    return secret is not None and sig == hashlib.sha256(secret.encode() + b"|" + data).hexdigest()


def signed(change: dict, *admins: str) -> dict:
    data = C.change_bytes(change)
    return {**change, "sigs": {a: sign(f"admin-{a}", data) for a in admins}}


def make_genesis(n: int = 4, admins=("a", "b", "c"), threshold: int = 2) -> C.Configuration:
    for a in admins:
        SECRETS[pub(f"admin-{a}")] = f"admin-{a}"
    return C.genesis(validators={i: pub(f"node{i}") for i in range(n)},
                     clients={"admin": pub("client-admin")}, readers={}, followers=[],
                     admins={a: pub(f"admin-{a}") for a in admins}, threshold=threshold)


def test_genesis_hash_is_of_its_canonical_form_and_round_trips():
    g = make_genesis()
    assert g.version == 0 and g.n == 4 and g.threshold == 2
    assert C.from_dict(g.to_dict()) == g and C.from_dict(g.to_dict()).hash == g.hash
    assert make_genesis(admins=("a", "b")).hash != g.hash


def test_genesis_with_broken_rules_is_refused():
    with pytest.raises(C.ConfigRefused, match="config_too_few_validators"):
        make_genesis(n=3)
    with pytest.raises(C.ConfigRefused, match="config_bad_threshold"):
        make_genesis(threshold=4)
    with pytest.raises(C.ConfigRefused, match="config_duplicate"):
        C.genesis({0: pub("x"), 1: pub("x"), 2: pub("y"), 3: pub("z")}, {}, {}, [], {}, 0)


def test_an_accepted_change_takes_effect_at_the_first_checkpoint_after_s_plus_the_window():
    h = C.ConfigHistory(make_genesis(), K, L)
    change = signed(C.proposal(h.latest, [{"op": "add_client", "name": "compute1",
                                           "key": pub("client-compute1")}]), "a", "b")
    out = h.execute(5, change, verify)
    assert out["config"] == "accepted" and out["version"] == 1
    assert out["effective"] == 17  # s + L = 13 -> checkpoint 16 -> from 17
    assert h.at(16).client_key("compute1") is None
    assert h.at(17).client_key("compute1") == pub("client-compute1")
    assert h.pending(16) == [h.latest] and h.pending(17) == []


@pytest.mark.parametrize("signers, reason", [((), "config_unauthorized"),
                                             (("a",), "config_unauthorized"),
                                             (("a", "zed"), "config_unauthorized")])
def test_a_change_below_the_admin_policy_is_a_counted_no_op(signers, reason):
    h = C.ConfigHistory(make_genesis(), K, L)
    before = h.to_record()
    change = signed(C.proposal(h.latest, [{"op": "remove_validator", "id": 3}]), *signers)
    out = h.execute(3, change, verify)
    assert out["config"] == "refused" and out["reason"] == reason
    assert h.refused == {reason: 1}
    assert h.to_record()["entries"] == before["entries"]


def test_a_forged_signature_does_not_count():
    h = C.ConfigHistory(make_genesis(), K, L)
    change = signed(C.proposal(h.latest, [{"op": "add_follower", "name": "f1"}]), "a", "b")
    change["sigs"]["b"] = "00" * 64
    assert h.execute(1, change, verify)["reason"] == "config_unauthorized"
    garbage = dict(change, sigs={"a": change["sigs"]["a"], "b": "not hex"})
    assert h.execute(2, garbage, verify)["reason"] == "config_unauthorized"


def test_two_racing_proposals_one_is_refused_as_stale():
    h = C.ConfigHistory(make_genesis(), K, L)
    base = h.latest
    p1 = signed(C.proposal(base, [{"op": "add_client", "name": "c1", "key": pub("c1")}]), "a", "b")
    p2 = signed(C.proposal(base, [{"op": "add_client", "name": "c2", "key": pub("c2")}]), "b", "c")
    assert h.execute(10, p1, verify)["config"] == "accepted"
    out = h.execute(11, p2, verify)
    assert out == {"config": "refused", "reason": "config_stale", "detail": out["detail"],
                   "version": 1}
    assert h.latest.client_key("c2") is None
    # re-proposed on the new version it goes through, stacked behind the first
    p2b = signed(C.proposal(h.latest, [{"op": "add_client", "name": "c2", "key": pub("c2")}]), "a", "c")
    assert h.execute(12, p2b, verify)["version"] == 2


@pytest.mark.parametrize("change", [None, 7, {}, {"version": 0}, {"version": 0, "base": "x", "ops": [], "sigs": {}},
                                    {"version": -1, "base": "0" * 64, "ops": [{"op": "x"}], "sigs": {}},
                                    {"version": 0, "base": "0" * 64, "ops": "add", "sigs": []}])
def test_malformed_changes_are_refused_never_raised(change):
    h = C.ConfigHistory(make_genesis(), K, L)
    assert h.execute(1, change, verify)["reason"] == "config_malformed"


@pytest.mark.parametrize("ops, reason", [
    ([{"op": "remove_client", "name": "nobody"}], "config_unknown_member"),
    ([{"op": "add_client", "name": "admin", "key": pub("z")}], "config_duplicate"),
    ([{"op": "add_client", "name": "z", "key": pub("client-admin")}], "config_duplicate"),
    ([{"op": "add_validator", "id": 9, "key": pub("node0")}], "config_duplicate"),
    ([{"op": "remove_validator", "id": 0}], "config_too_few_validators"),
    ([{"op": "set_threshold", "threshold": 0}], "config_bad_threshold"),
    ([{"op": "remove_admin", "name": "c"}, {"op": "remove_admin", "name": "b"}], "config_bad_threshold"),
    ([{"op": "add_client", "name": "bad name", "key": pub("z")}], "config_malformed"),
    ([{"op": "add_client", "name": "z", "key": "ABC"}], "config_malformed"),
])
def test_changes_that_do_not_apply_are_refused_with_their_reason(ops, reason):
    h = C.ConfigHistory(make_genesis(), K, L)
    out = h.execute(1, signed(C.proposal(h.latest, ops), "a", "b"), verify)
    assert out["reason"] == reason, out
    assert h.latest.version == 0 and h.refused == {reason: 1}


def test_a_rotated_key_signs_nothing_after_the_boundary_and_history_still_verifies():
    h = C.ConfigHistory(make_genesis(), K, L)
    out = h.execute(2, signed(C.proposal(h.latest, [{"op": "rotate_validator", "id": 1,
                                                     "key": pub("node1-new")}]), "a", "c"), verify)
    b = out["effective"]
    assert h.key_valid("validator", 1, pub("node1"), b - 1)
    assert not h.key_valid("validator", 1, pub("node1"), b)
    assert h.key_valid("validator", 1, pub("node1-new"), b)
    ranges = {(r["member"], r["key"]): (r["from"], r["until"]) for r in h.key_ranges()
              if r["role"] == "validator"}
    assert ranges[(1, pub("node1"))] == (1, b) and ranges[(1, pub("node1-new"))] == (b, None)


def test_grow_to_seven_then_shrink_to_four_changes_quorum_and_primary_at_the_boundary():
    h = C.ConfigHistory(make_genesis(), K, L)
    grow = [{"op": "add_validator", "id": i, "key": pub(f"node{i}")} for i in (4, 5, 6)]
    b1 = h.execute(1, signed(C.proposal(h.latest, grow), "a", "b"), verify)["effective"]
    shrink = [{"op": "remove_validator", "id": i} for i in (0, 5, 6)]  # the view-0 primary too
    b2 = h.execute(b1 + 3, signed(C.proposal(h.latest, shrink), "a", "b"), verify)["effective"]
    assert [Q.quorum(h.at(s).n) for s in (b1 - 1, b1, b2 - 1, b2)] == [3, 5, 5, 3]
    assert h.at(b2).primary_id(0) == 1 and h.at(b2).index_of(4) == 3 and h.at(b2).index_of(0) is None


# -- random schedules ---------------------------------------------------------------

ADMINS = ("a", "b", "c", "d")
op_strategy = st.one_of(
    st.builds(lambda r, w, s: {"op": f"{r}_client", "name": w, **({"key": pub(s)} if r != "remove" else {})},
              st.sampled_from(["add", "remove", "rotate"]), st.sampled_from(["admin", "c1", "c2", "c3"]),
              st.sampled_from(["k1", "k2", "k3", "client-admin"])),
    st.builds(lambda r, w, s: {"op": f"{r}_reader", "name": w, **({"key": pub(s)} if r != "remove" else {})},
              st.sampled_from(["add", "remove", "rotate"]), st.sampled_from(["api1", "api2"]),
              st.sampled_from(["r1", "r2"])),
    st.builds(lambda r, w: {"op": f"{r}_follower", "name": w},
              st.sampled_from(["add", "remove"]), st.sampled_from(["f1", "f2"])),
    st.builds(lambda r, i, s: {"op": f"{r}_validator", "id": i, **({"key": pub(s)} if r != "remove" else {})},
              st.sampled_from(["add", "add", "remove", "rotate"]), st.integers(0, 9),
              st.sampled_from(["node0", "node1", "X", "Y", "Z", "W"])),
    st.builds(lambda r, w: {"op": f"{r}_admin", "name": w, **({"key": pub(f"admin-{w}")} if r != "remove" else {})},
              st.sampled_from(["add", "remove", "rotate"]), st.sampled_from(ADMINS)),
    st.builds(lambda t: {"op": "set_threshold", "threshold": t}, st.integers(0, 5)),
)
step_strategy = st.tuples(
    st.integers(1, 12),                              # seq gap
    st.lists(op_strategy, min_size=1, max_size=2),   # ops
    st.one_of(st.just(set(ADMINS)), st.sets(st.sampled_from(ADMINS + ("zed",)))),  # who signs
    st.sampled_from(["fresh", "fresh", "fresh", "stale", "forged"]),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_strategy, min_size=1, max_size=12))
def test_random_reconfiguration_schedules(schedule):
    """Set up a history; step: execute a random schedule of fresh, stale and forged
    changes signed by random admins; check: it never raises, accepts exactly the
    authorised valid fresh changes, every configuration keeps the rules, the boundary
    rule holds, lookup matches a brute-force scan, keys' validity ranges match lookup,
    and replay and the persisted record rebuild the same history."""
    for a in ADMINS:
        SECRETS[pub(f"admin-{a}")] = f"admin-{a}"
    h = C.ConfigHistory(make_genesis(admins=ADMINS[:3]), K, L)
    seq, log, accepted, refused = 0, [], 0, 0
    for gap, ops, signers, kind in schedule:
        seq += gap
        latest = h.latest
        change = C.proposal(latest, ops)
        if kind == "stale":
            change["version"] = latest.version + 1
        change = signed(change, *sorted(signers))
        if kind == "forged" and change["sigs"]:
            change["sigs"][sorted(change["sigs"])[0]] = "ab" * 64
        good = {s for s in change["sigs"] if s in dict(latest.admins)
                and verify(dict(latest.admins)[s], C.change_bytes(change), change["sigs"][s])}
        try:
            expected = C.check_change(latest, change, verify)
        except C.ConfigRefused:
            expected = None
        out = h.execute(seq, change, verify)
        log.append((seq, change))
        if out["config"] == "accepted":
            accepted += 1
            assert kind != "stale" and len(good) >= latest.threshold
            assert h.latest == expected and h.latest.version == latest.version + 1
            assert out["effective"] > seq + L and (out["effective"] - 1) % K == 0
        else:
            refused += 1
            assert h.latest == latest and expected is None
            if kind == "stale":
                assert out["reason"] == "config_stale"
    event(f"accepted changes: {min(accepted, 3)}{'+' if accepted >= 3 else ''}")
    entries = h.entries()
    assert [c.version for _, _, c in entries] == list(range(accepted + 1))
    assert sum(h.refused.values()) == refused
    froms = [f for _, f, _ in entries]
    assert froms == sorted(froms)
    for _, _, cfg in entries:
        assert cfg.n >= C.MIN_VALIDATORS and 1 <= cfg.threshold <= len(cfg.admins)
        C.check_configuration(cfg)
    last = froms[-1] + K
    for s in range(1, last + 1):
        brute = [c for _, f, c in entries if f <= s][-1]
        assert h.at(s) == brute
    for r in h.key_ranges():
        for s in (r["from"], (r["until"] or last) - 1):
            assert h.key_valid(r["role"], r["member"], r["key"], s)
        if r["until"] is not None:
            assert not h.key_valid(r["role"], r["member"], r["key"], r["until"])
    again = C.replay(h.genesis, log, verify, K, L)
    assert again.to_record() == h.to_record()
    restored = C.ConfigHistory.from_record(h.to_record())
    assert [c.hash for _, _, c in restored.entries()] == [c.hash for _, _, c in entries]
    assert restored.to_record() == h.to_record()


def test_a_history_of_the_genesis_alone_is_single_and_a_change_ends_that():
    """``single`` is what lets a node skip the per-request membership lookups while no
    change was ever accepted (pbft_tasks/membership.py ``admits``)."""
    from pbft_tasks.membership import Membership

    class Ledger:
        height = 0

        def __init__(self, history):
            self.history = history

        def config_history(self):
            return self.history

    history = C.ConfigHistory(make_genesis(), K, L)
    assert history.single
    assert Membership(Ledger(history), {}).admits("anyone/1", 10**9)
    change = signed(C.proposal(history.latest, [{"op": "add_client", "name": "compute1",
                                                 "key": pub("client-compute1")}]), "a", "b")
    assert history.execute(5, change, verify)["config"] == "accepted"
    assert not history.single
    # now the lookup runs: a client no configuration lists is not admitted
    assert not Membership(Ledger(history), {}).admits("anyone/1", 10**9)
