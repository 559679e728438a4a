"""apply(sync=False): one transaction without the fsync, then back to the chosen level."""
from ledger import LedgerStore


def test_relaxed_commit_restores_full_and_persists(tmp_path):
    path = tmp_path / "l.sqlite"
    store = LedgerStore(path, durability="full")
    store.apply({"votes/1": {"prepares": [1]}}, [], sync=False)
    # the connection is back at FULL for the next (durable) transaction
    assert store.pragma("synchronous") == 2
    store.apply({"votes/2": {"prepares": [2]}}, [])
    assert store.pragma("synchronous") == 2
    store.close()
    reopened = LedgerStore(path)
    assert reopened.protocol_records() == {"votes/1": {"prepares": [1]}, "votes/2": {"prepares": [2]}}
    reopened.close()


def test_normal_durability_is_left_alone_by_relaxed_commits(tmp_path):
    store = LedgerStore(tmp_path / "l.sqlite", durability="normal")
    store.apply({"a": 1}, [], sync=False)
    assert store.pragma("synchronous") == 1
    store.close()
