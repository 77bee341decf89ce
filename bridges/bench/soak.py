"""`musicgen-live soak`: a performer's long set against a real `serve`, watching its memory.

Starts `musicgen-live serve --output null` as a process of its own and plays a set against it
over OSC and WebSocket, the way the issues that asked for it describe:

- `rotation` (memory, issue 35): an OSC change every 3 s (a prompt among 8 fixed texts, cfg,
  temperature, top_k, seed) and a continuation every 60 s (`/continue 8`, `/continue/file
  loop.wav 8`, a WebSocket upload, in turn; a melody or style checkpoint adds its follow commands).
- `random` (nothing blocks the music, issue 32): every 0.2-2 s a random request of every kind from
  OSC or WebSocket - controls, prompts and blends, transport, queries, continuations from history,
  good files, named pipes, folders, empty files and uploads - and the same rotation's changes.

One WebSocket client listens to the audio throughout (gaps in its sample indices are counted), and
with `--browser` the browser page plays in headless Chromium too. Every 30 s the serve process'
resident memory is printed; after the warm-up (every path used once) its growth must stay within
`--bound` percent, every request must be answered (WebSocket requests by their event id, OSC
queries and continuations by their replies) and the stream must never stall; otherwise the command
exits 1. One idea at ~570 lines: the one long set, its two scenarios sharing the clients, the
memory watch and the verdict.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from musicgen_live.bridges.osc import encode
from musicgen_live.bridges.ws import HEADER

PROMPTS = [
    "dub techno, deep chords",
    "rain on a tin roof, ambient",
    "granular choir, slow swells",
    "solo cello, melancholic",
    "breakbeat, 170 bpm",
    "lofi piano, vinyl crackle",
    "modular bleeps, generative",
    "brass fanfare, triumphant",
]
SAMPLE_S = 30.0  # seconds between memory samples
ROTATE_S = 3.0  # an OSC change this often
CONTINUE_EVERY_S = 60.0  # a continuation this often (rotation)
ANSWER_S = 90.0  # a request not answered by then counts as unanswered (the server itself answers by 60 s)


@dataclass
class Sample:
    minutes: float
    rss_mb: float
    music_s: float
    underruns: int
    slides: int


@dataclass
class SoakResult:
    model: str
    scenario: str
    minutes: float
    warmup_minutes: float
    samples: list[Sample] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # requests by kind
    unanswered: list[str] = field(default_factory=list)
    refused: int = 0  # answered with an error (bad files are meant to be refused)
    continuations_done: int = 0
    stalls: int = 0  # times the server said `stalled`
    audio_gaps: int = 0  # holes in the listener's sample indices
    audio_s: float = 0.0  # seconds of audio the listener received
    errors: list[str] = field(default_factory=list)  # the server's error notifications (first few)

    @property
    def warm(self) -> Sample | None:
        """The first sample past the warm-up: the reference for growth."""
        return next((s for s in self.samples if s.minutes >= self.warmup_minutes), None)

    @property
    def growth_pct(self) -> float | None:
        warm = self.warm
        if warm is None or self.samples[-1] is warm:
            return None
        return 100.0 * (max(s.rss_mb for s in self.samples if s.minutes >= warm.minutes) - warm.rss_mb) / warm.rss_mb

    @property
    def slope_mb_per_min(self) -> float | None:
        late = [s for s in self.samples if s.minutes >= self.warmup_minutes]
        if len(late) < 3:
            return None
        return float(np.polyfit([s.minutes for s in late], [s.rss_mb for s in late], 1)[0])

    def problems(self, bound_pct: float) -> list[str]:
        out = []
        growth = self.growth_pct
        if growth is not None and growth > bound_pct:
            out.append(f"RSS grew {growth:.1f} % after the warm-up (bound {bound_pct:g} %)")
        if self.unanswered:
            out.append(f"{len(self.unanswered)} requests unanswered: {', '.join(self.unanswered[:5])}")
        if self.stalls:
            out.append(f"{self.stalls} stalls")
        return out


class Serve:
    """`musicgen-live serve` in a process of its own, on free ports, its stderr kept. `code`:
    another checkout whose engine/, streamer/ and bridges/ serve instead of these (before/after)."""

    def __init__(self, model: str, audio_dir: Path, extra: list[str], log: Path, code: Path | None = None) -> None:
        self.osc_port = _free_port(socket.SOCK_DGRAM)
        self.ws_port = _free_port(socket.SOCK_STREAM)
        self.log = log.open("w")
        env = dict(os.environ)
        if code is not None:  # lay it out under its installed name; PYTHONPATH wins over the editable install
            shim = Path(tempfile.mkdtemp(prefix="musicgen-code-")) / "musicgen_live"
            shim.mkdir()
            for part in ("engine", "streamer", "bridges", "config.toml"):
                (shim / part).symlink_to(code.resolve() / part)
            env["PYTHONPATH"] = str(shim.parent)
        cmd = [sys.executable, "-m", "musicgen_live.bridges.cli", "serve", "--model", model, "--output", "null"]
        cmd += ["--audio-dir", str(audio_dir), "--osc-port", str(self.osc_port), "--ws-port", str(self.ws_port)]
        self.proc = subprocess.Popen(
            [*cmd, "--status-every", "30", *extra],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout_s: float = 600) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.ws_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"serve did not listen within {timeout_s:.0f} s")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


class Osc:
    """One subscribed OSC peer: requests out, every reply and notification in (a thread reads)."""

    def __init__(self, port: int, result: SoakResult) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.result = result
        self.lock = threading.Lock()
        self.waiting: dict[str, list[tuple[float, str]]] = {}  # reply address -> (sent, what) oldest first
        self.quit = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def send(self, address: str, *args: object, expect: str | None = None) -> None:
        """Send `/musicgen/address`; `expect`: the reply address that answers it (counted)."""
        if expect is not None:
            with self.lock:
                self.waiting.setdefault(expect, []).append((time.monotonic(), f"osc {address}"))
        self.sock.sendto(encode(f"/musicgen/{address}", tuple(args)), self.server)

    def _read(self) -> None:
        from pythonosc.osc_message import OscMessage

        while not self.quit.is_set():
            try:
                m = OscMessage(self.sock.recvfrom(65536)[0])
            except (TimeoutError, OSError):
                continue
            except Exception:
                continue
            name = m.address.removeprefix("/musicgen/")
            if name in ("done", "fail"):  # a continuation's answer: /done|/fail NAME ...
                key = f"continuation {m.params[0]}"
                self.result.continuations_done += name == "done"
                self.result.refused += name == "fail"
            else:
                key = name
            with self.lock:
                if self.waiting.get(key):
                    self.waiting[key].pop(0)
            if name == "phase" and m.params and m.params[0] == "stalled":
                self.result.stalls += 1
            if name == "error" and len(self.result.errors) < 20 and m.params and not m.params[0]:
                self.result.errors.append(str(m.params[1]))

    def waiting_count(self) -> int:
        with self.lock:
            return sum(len(items) for items in self.waiting.values())

    def overdue(self, now: float) -> list[str]:
        with self.lock:
            out = []
            for items in self.waiting.values():
                while items and now - items[0][0] > ANSWER_S:
                    out.append(items.pop(0)[1])
            return out

    def close(self) -> None:
        self.quit.set()
        self.thread.join(timeout=2)
        self.sock.close()


class Web:
    """WebSocket clients: one listening to the audio, one sending requests with event ids."""

    def __init__(self, port: int, result: SoakResult) -> None:
        self.url = f"ws://127.0.0.1:{port}/"
        self.result = result
        self.pending: dict[int, tuple[float, str]] = {}
        self.ids = 0
        self.state: dict[str, Any] = {}
        self.next_sample: int | None = None

    async def listen(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "audio.subscribe", "enabled": True, "codec": "s16"}))
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                if isinstance(msg, bytes):
                    _magic, _v, _codec, channels, _r, rate, first, n = HEADER.unpack_from(msg)
                    if self.next_sample is not None and first != self.next_sample:
                        self.result.audio_gaps += 1
                    self.next_sample = first + n
                    self.result.audio_s += n / rate

    async def control(self, stop: asyncio.Event, requests: asyncio.Queue[dict[str, Any]]) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, max_size=None) as ws:

            async def reader() -> None:
                async for msg in ws:
                    if not isinstance(msg, str):
                        continue
                    obj = json.loads(msg)
                    if obj.get("type") == "state":
                        self.state = obj["state"]
                    elif obj.get("type") == "state.changed" and obj["changes"].get("phase") == "stalled":
                        self.result.stalls += 1
                    eid = obj.get("event_id")
                    if isinstance(eid, int) and eid in self.pending:
                        what = self.pending.pop(eid)[1]
                        if obj.get("type") == "error":
                            self.result.refused += 1
                        elif "continue" in what or "upload" in what:
                            self.result.continuations_done += 1

            task = asyncio.ensure_future(reader())
            try:
                while not stop.is_set():
                    try:
                        req = await asyncio.wait_for(requests.get(), 0.5)
                    except TimeoutError:
                        continue
                    for msg in req.pop("_before", []):
                        await ws.send(msg)
                    self.ids += 1
                    self.pending[self.ids] = (time.monotonic(), f"ws {req['type']} {req.get('source', '')}".strip())
                    await ws.send(json.dumps({**req, "event_id": self.ids}))
            finally:
                task.cancel()

    def overdue(self, now: float) -> list[str]:
        late = [k for k, (t, _) in self.pending.items() if now - t > ANSWER_S]
        return [self.pending.pop(k)[1] for k in late]


def upload(seconds: float, use: str = "continue") -> dict[str, Any]:
    """A WebSocket upload of `seconds` of noise: the binary frames go first (`_before`)."""
    rate = 16000
    pcm = (np.random.default_rng().uniform(-0.2, 0.2, int(rate * seconds)) * 32767).astype("<i2").tobytes()
    chunks = [pcm[i : i + 32000] for i in range(0, len(pcm), 32000)]
    begin = json.dumps({"type": "input_audio.begin", "rate": rate, "channels": 1, "codec": "s16"})
    return {"_before": [begin, *chunks], "type": "input_audio.commit", "use": use, "seconds": seconds}


def make_audio_dir(folder: Path) -> None:
    """loop.wav (good), and what a careless or hostile client points at: a named pipe, a folder,
    an empty file, text that claims to be audio."""
    import soundfile as sf

    sf.write(str(folder / "loop.wav"), np.random.default_rng(3).uniform(-0.2, 0.2, (32000 * 10, 1)), 32000)
    os.mkfifo(folder / "pipe.wav")
    (folder / "folder.wav").mkdir()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notaudio.wav").write_text("this is not audio\n" * 100)


class Player:
    """What the performer does: the rotation, and in `random` the random requests."""

    def __init__(self, osc: Osc, web: Web, queue: asyncio.Queue[dict[str, Any]], kind: str, seed: int) -> None:
        self.osc, self.web, self.queue = osc, web, queue
        self.kind = kind  # "text", "melody" or "style": what the checkpoint follows
        self.rng = random.Random(seed)
        self.turn = 0
        self.continuations = 0

    def rotate(self) -> str:
        """The rotation's next OSC change."""
        i = self.turn
        self.turn += 1
        choice = i % 5
        if choice == 0:
            self.osc.send("prompt", PROMPTS[(i // 5) % len(PROMPTS)])
            return "prompt"
        name, value = [
            ("cfg", 1.5 + (i % 7) * 0.5),
            ("temperature", 0.7 + (i % 5) * 0.1),
            ("top_k", 50 + (i % 4) * 50),
            ("seed", i),
        ][choice - 1]
        self.osc.send(name, value)
        return name

    def continuation(self) -> str:
        """The rotation's next continuation (or follow command on a melody / style checkpoint)."""
        kinds = ["continue", "file", "upload"] + (
            [f"{self.kind} history", f"{self.kind} upload"] if self.kind != "text" else []
        )
        k = kinds[self.continuations % len(kinds)]
        self.continuations += 1
        if k == "continue":
            self.osc.send("continue", 8.0, expect="continuation continue")
        elif k == "file":
            self.osc.send("continue/file", "loop.wav", 8.0, expect="continuation continue/file")
        elif k == "upload":
            self.queue.put_nowait(upload(8.0))
        elif k.endswith("history"):
            self.osc.send(f"{self.kind}/history", 4.0, expect=f"continuation {self.kind}/history")
        else:
            self.queue.put_nowait(upload(4.0, use=self.kind))
        return k

    def random_request(self) -> str:
        """One random request of any kind, from OSC or WebSocket."""
        r = self.rng
        options: list[tuple[str, Callable[[], None]]] = [
            ("osc set", lambda: self.osc.send(r.choice(["cfg", "temperature", "top_p", "gain"]), r.uniform(0.1, 1.0))),
            ("osc top_k", lambda: self.osc.send("top_k", r.randint(0, 300))),
            ("osc prompt", lambda: self.osc.send("prompt", r.choice(PROMPTS))),
            ("osc get", lambda: self.osc.send("get/cfg", expect="cfg")),
            ("osc state", lambda: self.osc.send("get/state", expect="state")),
            ("osc continue", lambda: self.osc.send("continue", r.uniform(1, 8), expect="continuation continue")),
            (
                "osc file",
                lambda: self.osc.send(
                    "continue/file",
                    r.choice(["loop.wav", "pipe.wav", "folder.wav", "empty.wav", "notaudio.wav", "missing.wav"]),
                    r.uniform(1, 8),
                    expect="continuation continue/file",
                ),
            ),
            ("ws update", lambda: self.queue.put_nowait({"type": "session.update", "cfg": r.uniform(1, 6)})),
            (
                "ws blend",
                lambda: self.queue.put_nowait(
                    {
                        "type": "session.update",
                        "weighted_prompts": [[p, r.uniform(0.1, 1)] for p in r.sample(PROMPTS, 2)]
                        if self.kind == "text"
                        else [[r.choice(PROMPTS), 1.0]],
                    }
                ),
            ),
            ("ws state", lambda: self.queue.put_nowait({"type": "state.get"})),
            (
                "ws transport",
                lambda: self.queue.put_nowait({"type": "playback.control", "action": r.choice(["pause", "reset"])}),
            ),
            (
                "ws file",
                lambda: self.queue.put_nowait(
                    {
                        "type": "generate.continue",
                        "source": "file",
                        "path": r.choice(["loop.wav", "pipe.wav", "folder.wav"]),
                        "seconds": 4,
                    }
                ),
            ),
            ("ws upload", lambda: self.queue.put_nowait(upload(r.uniform(1, 6)))),
        ]
        name, fn = r.choice(options)
        fn()
        if name == "ws transport":  # play again soon: the set goes on
            self.queue.put_nowait({"type": "playback.control", "action": "play"})
        return name


def run_soak(
    model: str,
    minutes: float,
    scenario: str,
    warmup_minutes: float,
    extra: list[str],
    browser: bool,
    say: Callable[[str], None],
    seed: int = 1,
    code: Path | None = None,
) -> SoakResult:
    result = SoakResult(model, scenario, minutes, warmup_minutes)
    folder = Path(tempfile.mkdtemp(prefix="musicgen-soak-"))
    make_audio_dir(folder)
    serve = Serve(model, folder, extra, folder / "serve.log", code)
    chromium: subprocess.Popen[bytes] | None = None
    try:
        serve.wait_ready()
        say(
            f"soak: serve pid {serve.proc.pid} on OSC {serve.osc_port}, WebSocket {serve.ws_port}; log {serve.log.name}"
        )
        if browser:
            chromium = _browser(serve.ws_port, folder)
        asyncio.run(_play(serve, result, scenario, seed, say))
    finally:
        if chromium is not None:
            chromium.kill()
        serve.close()
    say(f"soak: serve's log: {folder / 'serve.log'}")
    return result


async def _play(serve: Serve, result: SoakResult, scenario: str, seed: int, say: Callable[[str], None]) -> None:
    osc = Osc(serve.osc_port, result)
    web = Web(serve.ws_port, result)
    stop = asyncio.Event()
    requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    kind = "style" if "style" in result.model else "melody" if "melody" in result.model else "text"
    player = Player(osc, web, requests, kind, seed)
    tasks = [asyncio.ensure_future(web.listen(stop)), asyncio.ensure_future(web.control(stop, requests))]
    osc.send("subscribe")
    t0 = time.monotonic()
    next_sample = next_rotate = next_random = t0
    next_continue = t0 + 10.0
    next_subscribe = t0 + 300.0
    # the warm-up: every path once
    for _ in range(3 if kind == "text" else 5):
        result.sent[player.continuation()] += 1
        await asyncio.sleep(4.0)
    try:
        while (now := time.monotonic()) - t0 < result.minutes * 60:
            if now >= next_rotate:
                result.sent[player.rotate()] += 1
                next_rotate += ROTATE_S
            if now >= next_continue:
                result.sent[player.continuation()] += 1
                next_continue += CONTINUE_EVERY_S
            if scenario == "random" and now >= next_random:
                result.sent[player.random_request()] += 1
                next_random = now + player.rng.uniform(0.2, 2.0)
            if now >= next_subscribe:
                osc.send("subscribe")
                next_subscribe += 300.0
            if now >= next_sample:
                requests.put_nowait({"type": "state.get"})
                await asyncio.sleep(0.5)
                st = web.state
                s = Sample(
                    (now - t0) / 60, serve.rss_mb(), st.get("seconds", 0.0), st.get("underruns", 0), st.get("slides", 0)
                )
                result.samples.append(s)
                say(
                    f"soak {s.minutes:5.1f} min: rss {s.rss_mb:7.1f} MB  music {s.music_s:7.1f} s  "
                    f"underruns {s.underruns}  slides {s.slides}  requests {sum(result.sent.values())}  "
                    f"refused {result.refused}  "
                    f"unanswered {len(result.unanswered)}  stalls {result.stalls}  audio gaps {result.audio_gaps}"
                )
                next_sample += SAMPLE_S
            result.unanswered += osc.overdue(now) + web.overdue(now)
            if serve.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {serve.proc.returncode}")
            await asyncio.sleep(0.05)
        end = time.monotonic() + ANSWER_S  # the last requests get their whole deadline too
        while (osc.waiting_count() or web.pending) and time.monotonic() < end:
            await asyncio.sleep(0.5)
        result.unanswered += osc.overdue(end + ANSWER_S) + web.overdue(end + ANSWER_S)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        osc.close()


def _browser(port: int, folder: Path, url: str | None = None) -> subprocess.Popen[bytes] | None:
    """The browser page, listening, in headless Chromium (None when there is no Chromium); `url`:
    another page instead."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    return subprocess.Popen(
        [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={folder / 'chromium'}", "--remote-debugging-port=0",
            url if url is not None else f"http://127.0.0.1:{port}/?listen=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def format_soak(r: SoakResult, bound_pct: float) -> str:
    warm, last = r.warm, r.samples[-1] if r.samples else None
    lines = [f"soak of {r.model} ({r.scenario}), {r.minutes:g} min, warm-up {r.warmup_minutes:g} min"]
    if warm and last:
        growth, slope = r.growth_pct, r.slope_mb_per_min
        lines.append(
            f"  RSS {r.samples[0].rss_mb:.0f} MB at start, {warm.rss_mb:.0f} MB after the warm-up, "
            f"{last.rss_mb:.0f} MB at the end; growth after the warm-up "
            f"{'-' if growth is None else f'{growth:+.1f} %'} (bound {bound_pct:g} %), "
            f"slope {'-' if slope is None else f'{slope:+.2f} MB/min'}"
        )
        wall = 60 * (last.minutes - r.samples[0].minutes)
        pace = (last.music_s - r.samples[0].music_s) / wall if wall > 0 else float("nan")
        lines.append(
            f"  music/wall {pace:.2f}, underruns {last.underruns} "
            f"({last.underruns - warm.underruns} after the warm-up), slides {last.slides}, "
            f"listener audio {r.audio_s:.0f} s with {r.audio_gaps} gaps"
        )
    lines.append(
        f"  requests {sum(r.sent.values())} ({', '.join(f'{k} {v}' for k, v in sorted(r.sent.items()))}); refused "
        f"{r.refused}, continuations done {r.continuations_done}, unanswered {len(r.unanswered)}, stalls {r.stalls}"
    )
    if r.errors:
        lines.append(f"  server errors (first {len(r.errors)}): " + " | ".join(r.errors[:5]))
    problems = r.problems(bound_pct)
    lines.append("  " + ("FAILED: " + "; ".join(problems) if problems else "passed"))
    return "\n".join(lines)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
