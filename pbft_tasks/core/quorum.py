"""Quorum math (Castro and Liskov 1999, sec. 4.1 and 4.2).

Owns: how many faults a mesh of n replicas tolerates, and how many matching votes make
a certificate.  Kept apart, as etcd keeps its quorum package, so every rule that counts
votes says which quorum it needs by name.

For n = 3f+1 these are the paper's numbers: a quorum is 2f+1 and f+1 replicas always
include one honest replica.  For other n we use the general Byzantine quorum
ceil((n+f+1)/2), so that any two quorums intersect in at least f+1 replicas (one honest).
"""
from __future__ import annotations


def max_faulty(n: int) -> int:
    """f: the largest number of Byzantine replicas n replicas tolerate."""
    if n < 4:
        raise ValueError(f"PBFT needs n >= 4 replicas to tolerate one fault, got n={n}")
    return (n - 1) // 3


def quorum(n: int) -> int:
    """Matching votes for a certificate: 2f+1 when n = 3f+1."""
    f = max_faulty(n)
    return (n + f + 2) // 2


def weak_quorum(n: int) -> int:
    """f+1: enough votes that at least one comes from an honest replica."""
    return max_faulty(n) + 1


def prepared_quorum(n: int) -> int:
    """Prepares (from backups, besides the pre-prepare) that make 'prepared': 2f."""
    return quorum(n) - 1


def primary(view: int, n: int) -> int:
    """The primary of a view is v mod n (sec. 4.1)."""
    return view % n
