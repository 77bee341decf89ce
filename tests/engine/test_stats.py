"""The one percentile rule every report uses (`engine.stats`): nearest rank, rounding down; the
median is its 0.5 (the upper middle of an even count), on values in any order."""

from __future__ import annotations

import torch
from musicgen_live.engine.stats import median, percentile


def test_percentile_is_the_nearest_rank_rounding_down():
    ordered = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert [percentile(ordered, q) for q in (0.0, 0.5, 0.9, 0.99, 1.0)] == [1.0, 6.0, 10.0, 10.0, 10.0]
    assert percentile([], 0.5) is None
    assert float(percentile(torch.arange(100.0), 0.99)) == 99.0  # a 1-D tensor too


def test_median_sorts_and_takes_the_upper_middle_as_the_percentile_does():
    assert median([9.0, 1.0, 5.0]) == 5.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 3.0 == percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    assert median(x for x in (2.0, 1.0)) == 2.0  # any iterable, read once
    assert median([]) == 0.0 and median([], empty=7.5) == 7.5
