"""A JACK dummy server for the real PortAudio path (the `tiny` fixture is in tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest


def jack_running() -> bool:
    return subprocess.run(["jack_lsp"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def jack():
    """A JACK server with the dummy driver (clock-paced, no sound card): PortAudio's real callback path."""
    if not shutil.which("jackd"):
        pytest.fail("jackd is not installed: run scripts/setup.sh (it installs jackd2 and libportaudio2)")
    proc = None
    if not jack_running():
        proc = subprocess.Popen(
            ["jackd", "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            if jack_running():
                break
            time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail("jackd did not start")
    import sounddevice as sd

    sd._terminate()  # PortAudio scans host APIs at initialisation: rescan now that JACK is up
    sd._initialize()
    yield
    if proc:
        sd._terminate()  # close PortAudio's JACK client while its server still runs (else it asserts at exit)
        proc.terminate()
        proc.wait(timeout=5)
        sd._initialize()
