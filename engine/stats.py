"""Percentiles for the reports (bench, session snapshots): one nearest-rank rule everywhere, so a
p99 printed by `bench` and one in a session's status mean the same thing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def percentile(ordered: Sequence[Any], q: float) -> Any | None:
    """The value at fraction `q` (0..1) of `ordered` (sorted ascending; a list or a 1-D tensor),
    nearest rank rounding down; None when there is nothing."""
    if len(ordered) == 0:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Iterable[float], empty: float = 0.0) -> float:
    """`percentile(sorted(values), 0.5)`: the upper middle value of an even count, as every report
    here reads a median; `empty` when there are none."""
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2]) if ordered else empty
