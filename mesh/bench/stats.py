"""Figures every benchmark reports the same way: percentiles by nearest rank.

numpy's ``percentile(..., method="nearest")`` is the rank ``q/100 * (n - 1)`` rounded
to the nearest sample (halves to even), the definition the figures in docs/ were taken
with, so old and new JSON compare.  A percentile of no samples is NaN: a bench that has
none reports the figure as missing rather than as 0.
"""
from __future__ import annotations

from typing import Iterable

import numpy


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values`` by nearest rank; NaN for no values."""
    values = list(values)
    if not values:
        return float("nan")
    return float(numpy.percentile(values, q, method="nearest"))
