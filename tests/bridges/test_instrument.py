"""The browser instrument in headless Chromium, against a running `serve` stack.

Protects: the page builds a fader for every control from the server's one table (real ranges, top-k
with off) and shows the server's state; dragging a fader sends while it moves, and the server applies
it; the blend slots' weights become a weighted prompt on the server; a knob learnt with MIDI learn
(fed through the page's MIDI hook: headless Chromium has no MIDI devices) drives its control; a
change made elsewhere shows on the page; the audio keeps coming and the meter and waveform draw it;
a screenshot of it all can be taken (docs/browser-instrument.png is one).
"""

from __future__ import annotations

import time

from musicgen_live.streamer import commands as c
from musicgen_live.streamer.controls import CONTROLS

from ..polling import until
from .browser import Browser
from .conftest import Stack

# a WAV file of a 220 Hz tone made in the page: `wav(rate, seconds)` -> an ArrayBuffer
WAV_FILE = """const wav = (rate, seconds) => { const n = Math.round(rate * seconds), b = new ArrayBuffer(44 + 2 * n),
  v = new DataView(b), s = (o, t) => [...t].forEach((ch, i) => v.setUint8(o + i, ch.charCodeAt(0)));
  s(0, 'RIFF'); v.setUint32(4, 36 + 2 * n, true); s(8, 'WAVEfmt '); v.setUint32(16, 16, true); v.setUint16(20, 1, true);
  v.setUint16(22, 1, true); v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); s(36, 'data'); v.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) v.setInt16(44 + 2 * i, 8000 * Math.sin(2 * Math.PI * 220 * i / rate), true);
  return b; }"""


def test_the_instrument_follows_the_server_and_plays_it(tiny, tmp_path):
    stack = Stack(tiny, tmp_path)
    page = Browser()
    try:
        stack.session.submit(c.Set("temperature", 1.5)).wait(10)
        page.open(f"http://127.0.0.1:{stack.ws_port}/")
        page.wait_for("window.musicgenView && window.musicgenView.temperature === 1.5")
        faders = page.eval(
            "Object.fromEntries([...document.querySelectorAll('#controls input[type=range]')]"
            ".map((e) => [e.id, [Number(e.min), Number(e.max)]]))"
        )
        # every control of the server's table but what this checkpoint cannot do (cfg_beta: a style
        # checkpoint's double guidance) and the seed, a number typed in, not a 2^31-wide fader
        assert faders == {name: [ctl.lo, ctl.hi] for name, ctl in CONTROLS.items() if name not in ("cfg_beta", "seed")}
        assert page.eval("document.getElementById('seed').type") == "number"
        assert page.eval("document.getElementById('cfg_beta')") is None
        assert page.eval("document.getElementById('melodyRow').hidden && document.getElementById('styleRow').hidden")
        assert page.eval("document.getElementById('temperature').value") == "1.5"
        page.eval(
            "(() => { const e = document.getElementById('top_k'); e.value = 0; "
            "e.dispatchEvent(new Event('change')); })()"
        )
        page.wait_for("document.getElementById('top_kV').textContent === 'off'")
        assert until(lambda: stack.session.controls["top_k"] == 0, 20), "timed out"

        # a drag: input events while it moves reach the server before the release
        page.eval(
            "(() => { const e = document.getElementById('cfg'); for (const v of [4, 5, 6]) "
            "{ e.value = v; e.dispatchEvent(new Event('input')); } })()"
        )
        assert until(lambda: stack.session.controls["cfg"] == 6.0, 20), "timed out"
        page.eval("document.getElementById('cfg').dispatchEvent(new Event('change'))")

        # the blend: two slots, two weights
        page.eval(
            "(() => { const set = (id, v, ev) => { const e = document.getElementById(id); e.value = v; "
            "e.dispatchEvent(new Event(ev)); }; set('slot0', 'deep house', 'input'); set('slot1', 'tabla', 'input'); "
            "set('w0', 0.75, 'input'); set('w1', 0.25, 'change'); })()"
        )
        assert until(lambda: stack.session.prompts == [("deep house", 0.75), ("tabla", 0.25)], 20), "timed out"

        # MIDI learn: click, a knob moves (CC 21 on channel 1), then the knob drives gain
        page.eval("document.querySelector('[data-learn=gain]').click()")
        page.eval("window.musicgenMidi(0xb0, 21, 5)")
        assert page.eval("document.querySelector('[data-learn=gain]').textContent") == "CC21"
        page.eval("window.musicgenMidi(0xb0, 21, 127)")
        assert until(lambda: stack.session.controls["gain"] == CONTROLS["gain"].hi, 20), "timed out"

        # a change made elsewhere shows on the page
        stack.session.submit(c.Set("top_p", 0.9)).wait(10)
        page.wait_for("Number(document.getElementById('top_p').value) === 0.9")

        # Listen: the audio comes (only then: a page nobody listens to costs nothing) and the meter draws it
        assert page.eval("document.getElementById('status').textContent.match(/audio frames (\\d+)/)[1]") == "0"
        page.eval("document.getElementById('start').click()")
        page.wait_for("document.getElementById('start').textContent === 'Listening'")
        frames = page.wait_for("window.musicgenView && document.getElementById('status').textContent")
        assert "position" in frames
        page.wait_for("document.getElementById('status').textContent.match(/audio frames (\\d+)/)[1] > 50")
        read = stack.session.output.ring.read
        time.sleep(0.5)
        assert stack.session.output.ring.read > read  # the music goes on (Chromium shares the 2 cores: no xrun count)
        # an audio file dropped on the page: the session continues from it
        applied: list[str] = []
        stack.session.listeners.append(lambda kind, data: kind == "applied" and applied.append(data["ticket"].name))
        page.eval(WAV_FILE + "; window.musicgenUpload(new File([wav(44100, 2.5)], 'loop.wav', {type: 'audio/wav'}))")
        page.wait_for("document.getElementById('log').textContent.startsWith('continuing from the last 2.5 s')")
        assert until(lambda: "continue/upload" in applied, 60), "timed out"

        png = page.screenshot(str(tmp_path / "instrument.png"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    finally:
        page.close()
        stack.close()
