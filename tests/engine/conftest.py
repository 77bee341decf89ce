"""The `ac` fixture: audiocraft itself, importable on a CPU machine (`audiocraft_reference`)."""

from __future__ import annotations

from typing import Any

import pytest

from . import audiocraft_reference as ref


@pytest.fixture(scope="session")
def ac() -> Any:
    module = ref.import_audiocraft()
    assert module is not None, "audiocraft is installed for the tests by scripts/setup.sh"
    return module
