"""pbft_tasks/evidence_log.py: a flood of bad messages from one peer writes a log line
now and then, not one per message, and the next line says how many were not logged."""
from __future__ import annotations

import logging

from pbft_tasks.evidence_log import EvidenceLog


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_flood_from_one_sender_is_a_burst_of_lines_then_one_summing_up(caplog):
    clock = Clock()
    ev = EvidenceLog(logging.getLogger("t.evidence"), every=10.0, burst=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.evidence"):
        written = [ev.warning((1, "wrong_view"), "bad %s", i) for i in range(1000)]
        assert written[:3] == [True] * 3 and not any(written[3:])
        clock.t += 10.0
        assert ev.warning((1, "wrong_view"), "bad %s", "late")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad 0", "bad 1", "bad 2",
                     "bad late (and 997 more like it not logged before this, in 10s)"]


def test_other_senders_and_reasons_are_logged_on_their_own(caplog):
    ev = EvidenceLog(logging.getLogger("t.evidence2"), every=10.0, burst=1, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="t.evidence2"):
        assert ev.warning((1, "wrong_view"), "a")
        assert ev.warning((2, "wrong_view"), "b")
        assert ev.warning((1, "bad_signature"), "c")
        assert not ev.warning((1, "wrong_view"), "d")
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "c"]


def test_the_table_is_bounded():
    ev = EvidenceLog(logging.getLogger("t.evidence3"), every=10.0, clock=Clock(), max_keys=8)
    for i in range(100):
        ev.warning((i, "x"), "m")
    assert len(ev._periods) <= 8
