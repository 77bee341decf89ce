"""Settings of torch's native libraries that must be made before torch loads.

How long torch's OpenMP workers spin after an op before they sleep (`limit_spinning`):

libgomp's default (300 000 spins: milliseconds) keeps the generation thread's workers busy after
every step, while a stream faster than real time only waits for its ring: measured on the 2-core
host, `tiny` stepped at 50 steps a second used 0.75 cores with the default and 0.55 with 30 000
spins, at the same step time (the ops inside a step follow each other within microseconds, so
they still find the workers awake; an op 200 us after the last one does too). JACK, a DAW or a
second session beside `serve` gets the difference: with the default, the PortAudio test beside a
running `serve` saw 21 JACK xruns in 10 s. This module imports nothing heavy, so the CLI and the
tests can call it before anything loads torch.

How many compiled kernels oneDNN keeps (`bound_primitive_cache`): oneDNN compiles (JIT) a primitive
for every convolution shape it meets and keeps it in a cache of 1 024 by default. A live session
meets new shapes all night - a continuation's or a style's audio of any length, encoded in pieces -
and each kept primitive holds ~0.4 MB: measured, a `serve` of `tiny` with a continuation a minute
grew ~10 MB a minute for as long as it ran (issue 35). 128 holds every shape a stream steps with
(the codec's streaming convolutions) and bounds the rest to ~50 MB.
"""

from __future__ import annotations

import os

SPIN_COUNT = "30000"
PRIMITIVE_CACHE = "128"  # compiled oneDNN primitives kept (its own default: 1024)


def limit_spinning() -> None:
    """Ask libgomp for `SPIN_COUNT` spins (a value already in the environment wins). It takes
    effect only if torch has not been imported yet in this process."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def bound_primitive_cache() -> None:
    """Keep at most `PRIMITIVE_CACHE` compiled oneDNN primitives (a value already in the
    environment wins); takes effect only before torch's first convolution in this process."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE)
