"""Torch's CPU thread pool belongs to the generation thread.

torch runs its parallel CPU ops on OpenMP. GNU OpenMP (libgomp) gives each thread that starts a
parallel region a pool of workers of its own, and once it manages more threads than there are
cores it stops those workers spinning between regions: every parallel op then pays a futex
wake-up. Measured on the 2-core host: a (2, 1024) softmax 3.5 us on the first pool, 60-70 us on a
second one; a musicgen-small int8 step 40 ms on the main thread, 72 ms on a generation thread
while the main thread (which had loaded the model) still held its pool (BENCHMARKS.md).

So a streaming process keeps one pool: its main thread computes single-threaded (`confine`), a
heavy one-off job such as loading a model runs on a short-lived thread whose pool leaves with it
(`on_pool_thread`), and the generation thread takes the cores (`claim`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

CORES = torch.get_num_threads()  # torch's own default (OMP_NUM_THREADS, else the cores), read before any change

T = TypeVar("T")


def confine() -> None:
    """This thread computes single-threaded from now on: it never starts a pool of its own."""
    torch.set_num_threads(1)


def claim() -> None:
    """This thread (the generation thread) computes on all the cores."""
    torch.set_num_threads(CORES)


def on_pool_thread(fn: Callable[[], T], name: str = "loader") -> T:
    """`fn()` on a thread of its own with all the cores, waited for; its result, or its exception
    raised here. The thread's pool goes when it ends, so it does not slow the generation thread."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        claim()
        try:
            out.append(fn())
        except BaseException as e:  # handed to the caller, whatever it is (KeyboardInterrupt included)
            err.append(e)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]
