"""The benches' one percentile (mesh/bench/stats.py): nearest rank, as every figure in
docs/ was taken, whatever order the samples come in; no samples, no figure."""
from __future__ import annotations

import math
import random

from mesh.bench import followers, read, stats


def test_nearest_rank_rounds_the_rank_half_to_even():
    values = list(range(1, 101))
    random.Random(7).shuffle(values)
    # rank q/100 * (n - 1): 49.5 -> 50, 98.01 -> 98
    assert [stats.percentile(values, q) for q in (0, 50, 99, 100)] == [1, 51, 99, 100]
    assert stats.percentile([3.0, 1.0], 50) == 1.0          # rank 0.5 -> 0
    assert stats.percentile((x for x in (5,)), 99) == 5     # any iterable


def test_no_samples_is_nan_not_zero():
    assert math.isnan(stats.percentile([], 50))


def test_every_bench_uses_it():
    assert followers.percentile is stats.percentile and read.percentile is stats.percentile
