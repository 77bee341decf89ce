"""Random checkpoints the tests build themselves (no downloads), saved as hub repos ship them."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.presets import ENCODEC_32K, T5_TINY, Arch, save_random_checkpoint

from tests.hoststall import Stalls, Watchdog

# A slim codec keeps the suite fast; the 32 kHz-sized codec is covered in test_codec.py.
SLIM_CODEC = dict(ENCODEC_32K, num_filters=8, hidden_size=32, codebook_dim=32)

# Several decoder shapes, not only `tiny`: widths, depths, head counts, T5 sizes and the
# enc_to_dec_proj present or absent all vary.
ARCHS: dict[str, Arch] = {
    "h64-l2-h4": Arch(hidden=64, layers=2, heads=4, codec=SLIM_CODEC),
    "h96-l3-h6-ffn200": Arch(
        hidden=96, layers=3, heads=6, ffn=200, codec=SLIM_CODEC, text=dict(T5_TINY, d_model=48, d_kv=12, num_layers=3)
    ),
    "h32-l4-h2-noproj": Arch(hidden=32, layers=4, heads=2, codec=SLIM_CODEC, text=dict(T5_TINY, d_model=32)),
    # stereo: 8 codebooks, L/R interleaved, each channel through the same mono codec
    "h64-l2-h4-stereo": Arch(hidden=64, layers=2, heads=4, num_codebooks=8, audio_channels=2, codec=SLIM_CODEC),
    "h48-l3-h4-stereo": Arch(
        hidden=48, layers=3, heads=4, ffn=160, num_codebooks=8, audio_channels=2, codec=SLIM_CODEC
    ),
}

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory):
    """arch name -> directory holding a random checkpoint of that architecture (built once)."""
    made: dict[str, Path] = {}

    def get(name: str, seed: int = 7) -> Path:
        key = f"{name}-{seed}"
        if key not in made:
            path = tmp_path_factory.mktemp(key)
            save_random_checkpoint(str(path), ARCHS[name], seed=seed)
            made[key] = path
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny() -> MusicGen:
    """The built-in `tiny` model, loaded once for the whole suite."""
    return MusicGen.load("tiny", progress=None)


# -- host stalls (tests/hoststall.py) -------------------------------------------------------------
# Many tests here play in real time. A test that fails while the host itself stalled (measured by a
# watchdog process, not guessed) is run again, at most twice; a failure on a quiet host is final.
_watchdog: Watchdog | None = None
_started = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    global _watchdog
    _watchdog = Watchdog()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _watchdog is not None:
        _watchdog.close()


def _stalls(item: pytest.Item) -> Stalls:
    assert _watchdog is not None
    return _watchdog.since(item.stash.get(_started, time.monotonic()))


def _host_stalled(item: pytest.Item, error: BaseException | None = None) -> bool:
    return _stalls(item).spoils_real_time


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=1, condition=partial(_host_stalled, item)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_started] = time.monotonic()  # each attempt (a rerun sets up again)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("host", str(_stalls(item))))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _watchdog is not None:
        terminalreporter.write_line(f"during the run, {_watchdog.since(_watchdog.t0)}")
