"""The browser page's blend, as a performer drives it (issue 34), in headless Chromium. Protects: a
slot keeps its text and row through weights 1 -> 0 -> 1, across another client's prompt and a page
reload; Enter in the prompt line keeps a blend; a drag that replaces a pending prompt shows no
error."""

from __future__ import annotations

import time

from musicgen_live.streamer import commands as c

from .browser import Browser
from .conftest import Stack

TEXTS = ["dub techno", "rain on tin", "granular choir", "solo cello"]


def _until(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _slots(page: Browser) -> list[list]:
    return page.eval(
        "[0,1,2,3].map((i) => [document.getElementById('slot' + i).value, "
        "Number(document.getElementById('w' + i).value)])"
    )


def _set(page: Browser, pairs: list[tuple[str, float]]) -> None:
    """Type the texts and move the faders as a performer does (input while moving, change on release)."""
    script = "".join(
        f"(() => {{ const t = document.getElementById('slot{i}'); t.value = {text!r}; "
        f"const w = document.getElementById('w{i}'); w.value = {weight}; w.dispatchEvent(new Event('input')); "
        f"w.dispatchEvent(new Event('change')); }})();"
        for i, (text, weight) in enumerate(pairs)
    )
    page.eval(script)


def test_slots_keep_their_texts_through_zero_other_clients_and_a_reload(tiny, tmp_path):
    stack = Stack(tiny, tmp_path)
    page = Browser()
    try:
        page.open(f"http://127.0.0.1:{stack.ws_port}/")
        page.wait_for("window.musicgenView && window.musicgenView.slots !== undefined")
        _set(page, list(zip(TEXTS, [1.0, 0.4, 0.25, 0.84])))
        _until(lambda: [t for t, _ in stack.session.prompts] == TEXTS)
        _set(page, list(zip(TEXTS, [0.0, 0.4, 0.25, 0.84])))  # slot 1 down to 0
        _until(lambda: [t for t, _ in stack.session.prompts] == TEXTS[1:])
        page.wait_for("document.getElementById('w0').value === '0'")
        assert _slots(page) == [[t, w] for t, w in zip(TEXTS, [0.0, 0.4, 0.25, 0.84])]  # nothing re-packed
        _set(page, list(zip(TEXTS, [1.0, 0.4, 0.25, 0.84])))  # and back up
        _until(lambda: [t for t, _ in stack.session.prompts] == TEXTS)

        stack.session.submit(c.SetPrompt("rain on tin"), source="osc 1").wait(20)  # another client's prompt
        page.wait_for("document.getElementById('w1').value === '1'")
        assert _slots(page) == [[t, w] for t, w in zip(TEXTS, [0.0, 1.0, 0.0, 0.0])]

        page.open(f"http://127.0.0.1:{stack.ws_port}/")  # a reload
        page.wait_for("document.getElementById('slot3').value === 'solo cello'")
        assert _slots(page) == [[t, w] for t, w in zip(TEXTS, [0.0, 1.0, 0.0, 0.0])]

        # Enter in the prompt line: "a | b" stays a blend, each part at its weight
        stack.session.submit(c.SetWeightedPrompts((("dub techno", 0.7), ("rain on tin", 0.3)))).wait(20)
        page.wait_for("document.getElementById('prompt').value === 'dub techno | rain on tin'")
        page.eval("document.getElementById('promptForm').requestSubmit()")
        time.sleep(1.0)
        assert stack.session.prompts == [("dub techno", 0.7), ("rain on tin", 0.3)]

        # a drag over prompts never heard before: each replaces the last while T5 works; no error shows
        page.eval("document.getElementById('log').textContent = ''")
        for i in range(6):
            _set(page, [(f"new texture {i}", 1.0), ("", 0.0), ("", 0.0), ("", 0.0)])
            time.sleep(0.12)  # the page sends a blend at most every 100 ms
        _until(lambda: stack.session.prompts == [("new texture 5", 1.0)], 30)
        time.sleep(0.5)
        assert "error" not in page.eval("document.getElementById('log').textContent")
    finally:
        page.close()
        stack.close()
