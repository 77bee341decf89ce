"""How long torch's OpenMP workers spin after an op before they sleep - set before torch loads.

libgomp's default (300 000 spins: milliseconds) keeps the generation thread's workers busy after
every step, while a stream faster than real time only waits for its ring: measured on the 2-core
host, `tiny` stepped at 50 steps a second used 0.75 cores with the default and 0.55 with 30 000
spins, at the same step time (the ops inside a step follow each other within microseconds, so
they still find the workers awake; an op 200 us after the last one does too). JACK, a DAW or a
second session beside `serve` gets the difference: with the default, the PortAudio test beside a
running `serve` saw 21 JACK xruns in 10 s. This module imports nothing heavy, so the CLI and the
tests can call it before anything loads torch.
"""

from __future__ import annotations

import os

SPIN_COUNT = "30000"


def limit_spinning() -> None:
    """Ask libgomp for `SPIN_COUNT` spins (a value already in the environment wins). It takes
    effect only if torch has not been imported yet in this process."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
