"""Piece-at-a-time computations: generators that do one piece of work per `next()` (or per
`send(amount)`), so a live stream can spread them over its steps. Exhausted with `run`, each is
its one-shot form."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")


def run(steps: Generator[None, Any, T]) -> T:
    """Exhaust a piece-at-a-time computation and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
