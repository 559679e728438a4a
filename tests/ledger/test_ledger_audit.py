"""audit_chain names the first block whose seq, prev link, hash or digest is wrong."""
from __future__ import annotations

import copy

import pytest

from ledger import LedgerError, LedgerStore, audit_chain, build_block
from ledger.memory import put
from pbft_tasks.core.chain import GENESIS, block_hash


def chain_of(n: int) -> list[dict]:
    blocks, head = [], GENESIS
    for seq in range(1, n + 1):
        blocks.append(build_block(seq, head, [put(f"k{seq}", seq)]))
        head = blocks[-1]["hash"]
    return blocks


def test_good_chain_passes_and_hook_sees_every_block():
    seen = []
    audit_chain(chain_of(5), verify_certificate=lambda b: seen.append(b["seq"]))
    assert seen == [1, 2, 3, 4, 5]


def test_changed_header_names_that_block():
    blocks = chain_of(5)
    blocks[2]["skip"] = [0]
    blocks[4]["skip"] = [0]
    with pytest.raises(LedgerError, match=r"^block 3: hash"):
        audit_chain(blocks)


def test_changed_request_names_that_block():
    blocks = chain_of(5)
    blocks[1]["requests"][0]["op"]["value"] = "forged"
    with pytest.raises(LedgerError, match=r"^block 2: digest"):
        audit_chain(blocks)


def test_rehashed_block_breaks_the_next_link():
    blocks = chain_of(5)
    blocks[2]["skip"] = [0]
    blocks[2]["hash"] = block_hash(blocks[2])
    with pytest.raises(LedgerError, match=r"^block 4: prev"):
        audit_chain(blocks)


def test_missing_block_is_named():
    blocks = chain_of(5)
    del blocks[2]
    with pytest.raises(LedgerError, match=r"^block 4: expected seq 3"):
        audit_chain(blocks)


def test_certificate_hook_failure_names_the_block():
    def verify(block):
        if block["seq"] == 2:
            raise ValueError("only 2 of 3 signatures valid")
    with pytest.raises(LedgerError, match=r"^block 2: certificate rejected: only 2"):
        audit_chain(chain_of(4), verify_certificate=verify)


def test_audit_a_slice_from_its_start():
    blocks = chain_of(6)
    audit_chain(blocks[3:], height=3, head=blocks[2]["hash"])
    with pytest.raises(LedgerError, match=r"^block 4: expected seq 1"):
        audit_chain(blocks[3:])


def test_audit_of_a_stored_chain_catches_a_tampered_file(tmp_path):
    path = tmp_path / "n.sqlite"
    blocks = chain_of(4)
    with LedgerStore(path) as s:
        s.apply({}, blocks)
        audit_chain(s.iter_blocks())
    # Someone edits block 3 on disk behind the writer's back.
    import sqlite3
    from ledger import format as fmt
    forged = copy.deepcopy(blocks[2])
    forged["requests"][0]["op"]["value"] = 666
    with sqlite3.connect(path) as conn:
        conn.execute(f'UPDATE "{fmt.TABLE}" SET value = ? WHERE key = ?',
                     (fmt.encode(forged), fmt.block_key(3)))
    with LedgerStore(path) as s, pytest.raises(LedgerError, match=r"^block 3: digest"):
        audit_chain(s.iter_blocks())
