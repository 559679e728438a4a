"""The paper's workload: 100 ``get_vnc_console`` calls over six instances.

Owns: the exact call order of Kim and Park's experiment (HCIS 2020, "Performance evaluation").
Instances are numbered 1..6.  In phase k (k = 1..6) a round calls instances 1..k in
order; phase k runs ``ROUNDS[k-1]`` rounds:

    phase   instances   rounds   calls
      1        1          6        6
      2        1, 2       5       10
      3        1..3       5       15
      4        1..4       5       20
      5        1..5       5       25
      6        1..6       4       24      -> 100 calls

So instance k is first called in phase k, once per instance: six first calls (the
step-2 candidates of the two-step read), and 94 calls that can be answered by step 1.

Pure: no I/O, no clock; the benchmark (mesh/bench/paper.py) maps instance numbers to
real instance ids.
"""
from __future__ import annotations

INSTANCES = 6
ROUNDS = (6, 5, 5, 5, 5, 4)


def paper_sequence() -> list[tuple[int, int]]:
    """The 100 calls in order, as ``(phase, instance)`` pairs, both numbered from 1."""
    calls = []
    for phase, rounds in enumerate(ROUNDS, start=1):
        for _ in range(rounds):
            calls.extend((phase, instance) for instance in range(1, phase + 1))
    return calls


def first_calls(sequence: list[tuple[int, int]]) -> dict[int, int]:
    """Instance -> the 0-based position of its first call in ``sequence``."""
    first: dict[int, int] = {}
    for pos, (_, instance) in enumerate(sequence):
        first.setdefault(instance, pos)
    return first


__all__ = ["INSTANCES", "ROUNDS", "paper_sequence", "first_calls"]
