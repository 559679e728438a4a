"""BatchVerifier finds exactly the bad signatures, whichever path the batch takes."""
from __future__ import annotations

import dataclasses
import logging

import pytest
from nacl.signing import SigningKey

from pbft_tasks import batch_verify
from pbft_tasks.batch_verify import BatchVerifier, Signed
from pbft_tasks.core import messages
from pbft_tasks.core.messages import Commit, Request
from pbft_tasks.signing import Signer


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for the whole test session (2-3 s to start), shut down at the end."""
    import ray  # a hard dependency (pyproject.toml): its absence fails, never skips
    if ray.is_initialized():   # someone else's session Ray: use it, leave it running
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


NODE_KEYS = [SigningKey.generate() for _ in range(4)]
CLIENT_KEY = SigningKey.generate()
STRANGER = SigningKey.generate()


def verifier(**kw) -> BatchVerifier:
    return BatchVerifier({i: k.verify_key for i, k in enumerate(NODE_KEYS)},
                         {"admin": CLIENT_KEY.verify_key}, **kw)


def flip(sig: str) -> str:
    return ("1" if sig[0] == "0" else "0") + sig[1:]


def mixed_batch(size: int) -> tuple[list, list[tuple[int, str]]]:
    """``size`` items (triples, Commits, Requests) with a known set of bad ones."""
    items, expected = [], []
    client = Signer("admin/s1", CLIENT_KEY)
    for i in range(size):
        node = i % 4
        kind = i % 3
        if kind == 0:
            data = f"triple {i}".encode()
            items.append(Signed(node, data, NODE_KEYS[node].sign(data).signature))
        elif kind == 1:
            items.append(Signer(node, NODE_KEYS[node]).sign(
                Commit(view=0, seq=i + 1, digest=f"{i:064x}", sender=node)))
        else:
            items.append(client.sign(Request("admin/s1", i, {"op": "delete", "key": f"k{i}"})))
    # the bad ones, spread over the whole batch so they land in different chunks
    spots = sorted({1, 2, 3, size // 3, size // 2 + 1, size - 2, size - 1})
    for j, i in enumerate(spots):
        item = items[i]
        case = j % 6
        if isinstance(item, Signed):
            if case in (0, 3):   # signed by someone else
                items[i] = Signed(item.signer, item.data, STRANGER.sign(item.data).signature)
                expected.append((i, "bad_signature"))
            elif case == 1:
                items[i] = Signed(item.signer, item.data + b"!", item.sig)
                expected.append((i, "bad_signature"))
            elif case == 2:
                items[i] = Signed(7, item.data, item.sig)
                expected.append((i, "unknown_node"))
            elif case == 4:
                items[i] = Signed(STRANGER.verify_key.encode(), item.data, item.sig)
                expected.append((i, "bad_signature"))
            else:
                items[i] = Signed(item.signer, item.data, item.sig[:10])
                expected.append((i, "malformed_signature"))
        elif case in (0, 3, 4):
            items[i] = dataclasses.replace(item, sig=flip(item.sig))
            expected.append((i, "bad_signature"))
        elif case == 1:
            items[i] = dataclasses.replace(item, sig="")
            expected.append((i, "missing_signature"))
        elif case == 2:
            items[i] = dataclasses.replace(item, sig=item.sig.upper())
            expected.append((i, "malformed_signature"))
        else:
            if isinstance(item, Request):
                items[i] = dataclasses.replace(item, client="mallory/s1")
                expected.append((i, "unknown_client"))
            else:
                items[i] = dataclasses.replace(item, sender=9)
                expected.append((i, "unknown_node"))
    return items, expected


def test_small_batch_is_checked_inline_and_names_each_bad_item():
    items, expected = mixed_batch(24)
    with verifier() as bv:
        assert bv.verify(items) == expected
        assert bv.last_path == "inline"


def test_threaded_batch_finds_the_same_failures_and_does_not_start_ray():
    items, expected = mixed_batch(600)
    with verifier(inline_max=10_000) as bv:
        assert bv.verify(items) == expected
        assert bv.last_path == "threads"
        assert bv.ray_start_s is None and bv._remote is None


def test_all_good_batch_has_no_failures():
    items, _ = mixed_batch(40)
    with verifier() as bv:
        assert bv.verify(items[4:12]) == []
        assert bv.verify([]) == []


def test_ray_path_finds_exactly_the_bad_indices_across_chunks(ray_session):
    size = batch_verify.RAY_CHUNK_MIN * 3 + 17       # several chunks, a ragged last one
    items, expected = mixed_batch(size)
    with verifier(inline_max=100) as bv:            # force Ray with a tiny threshold
        assert bv.verify(items) == expected
        assert bv.last_path == "ray"
        assert bv.ray_start_s is None               # it joined the session's Ray
    assert ray_session.is_initialized()             # and left it running


def test_same_answer_on_every_path(ray_session):
    items, expected = mixed_batch(300)
    with verifier() as bv:
        work, early = bv.prepare(items)
        triples = [(k, d, s) for _, k, d, s in work]
        answers = {p: bv.verify_triples(triples, p) for p in ("inline", "threads", "ray")}
    assert answers["inline"] == answers["threads"] == answers["ray"]
    got = sorted(early + [(work[j][0], r) for j, r in answers["ray"]])
    assert got == expected


def test_something_that_is_not_a_message_is_our_bug():
    with verifier() as bv, pytest.raises(TypeError):
        bv.verify([{"type": "Commit"}])


def test_signing_bytes_are_the_messages_own():
    node = Signer(1, NODE_KEYS[1])
    msg = node.sign(Commit(view=2, seq=5, digest="a" * 64, sender=1))
    triple = Signed(1, messages.signing_bytes(msg), bytes.fromhex(msg.sig))
    with verifier() as bv:
        assert bv.verify([msg, triple]) == []
