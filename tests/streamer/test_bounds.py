"""What a long set leaves behind (issue 35). Protects: audio of ever new lengths, encoded, grows the
process by a bounded amount (oneDNN's cache of compiled primitives is capped before torch loads);
continuations and uploads in a row leave the session holding what one left it."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
from musicgen_live.streamer import commands as c

from .live import playing, submit

GROWTH = textwrap.dedent(
    """
    import sys
    from musicgen_live.streamer.openmp import bound_primitive_cache
    if sys.argv[1] == "bounded":
        bound_primitive_cache()  # as the CLI does, before torch loads
    import torch
    from musicgen_live.engine.model import MusicGen

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))

    torch.set_num_threads(1)
    codec = MusicGen.load("tiny").codec
    g = torch.Generator().manual_seed(0)
    for i in range(120):  # continuations of 120 different lengths, encoded whole
        codec.encode(0.1 * torch.randn(1, 1, 640 * 20 + 97 * i, generator=g))
        if i == 9:
            first = rss_mb()
    print(rss_mb() - first)
    """
)


def test_audio_of_ever_new_lengths_grows_the_process_a_bounded_amount():
    """Measured: 205 MB over 110 new lengths with oneDNN's own cache of 1 024, 26 MB with ours."""
    out = subprocess.run(
        [sys.executable, "-c", GROWTH, "bounded"], capture_output=True, text=True, timeout=300, check=True
    )
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 80, f"{growth_mb:.0f} MB"


def test_continuations_and_uploads_in_a_row_leave_the_session_holding_what_one_left(tiny, tmp_path):
    rng = np.random.default_rng(0)

    def upload() -> c.Command:
        return c.ContinueAudio(rng.uniform(-0.2, 0.2, (16000 * 4, 1)).astype(np.float32), 16000, 4.0)

    with playing(tiny, context_s=5.0, window_s=10.0) as s:
        for cmd in (upload(), c.ContinueHistory(2.0)):  # every path once: caches and buffers filled
            assert submit(s, cmd, timeout=60).error is None
        gc.collect()
        tracemalloc.start()
        try:
            held = tracemalloc.get_traced_memory()[0]
            for _ in range(6):  # each upload is 256 KB of samples: six kept would be 1.5 MB
                assert submit(s, upload(), timeout=60).error is None
                assert submit(s, c.ContinueHistory(2.0), timeout=60).error is None
            for _ in range(3):  # the probes of the last ones are resolved once heard
                submit(s, c.Query())
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - held
        finally:
            tracemalloc.stop()
    assert grown < 600_000, f"{grown / 1e6:.2f} MB retained after 12 more continuations"
