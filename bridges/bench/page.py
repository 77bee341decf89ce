"""`musicgen-live bench-page`: what the browser page costs beside a playing `serve`.

On a performer's laptop the page shares the CPU with the engine. This starts `serve` (null
output) in a process of its own and measures four phases of `seconds` each, one after another:
no browser; headless Chromium on a blank page; on the page; on the page, listening (`?listen=1`:
as if Listen was pressed). For each: Chromium's CPU time (all its processes), serve's CPU time and
serve's underruns. The page's own cost is a page phase's Chromium time less the blank page's.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from musicgen_live.bridges.bench.soak import Serve, _browser, make_audio_dir
from musicgen_live.bridges.osc import encode

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class PagePhase:
    name: str
    seconds: float
    chromium_cpu_s: float | None  # None: no browser in this phase
    serve_cpu_s: float
    underruns: int


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and their reaped children)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except OSError:
            pass
    return total / TICK


def _tree(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _underruns(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        sock.sendto(encode("/musicgen/get/underruns", ()), ("127.0.0.1", port))
        from pythonosc.osc_message import OscMessage

        while True:
            m = OscMessage(sock.recvfrom(65536)[0])
            if m.address == "/musicgen/underruns":
                return int(m.params[0])


def run_page_bench(model: str, seconds: float, say: Callable[[str], None], code: Path | None = None) -> list[PagePhase]:
    folder = Path(tempfile.mkdtemp(prefix="musicgen-page-"))
    make_audio_dir(folder)
    serve = Serve(model, folder, [], folder / "serve.log", code)
    phases = []
    try:
        serve.wait_ready()
        time.sleep(5.0)  # past the start
        page = f"http://127.0.0.1:{serve.ws_port}/"
        for name, url in (
            ("no browser", None),
            ("blank page", "about:blank"),
            ("the page, open", page),
            ("the page, listening", page + "?listen=1"),
        ):
            chromium = _browser(serve.ws_port, folder, url) if url is not None else None
            if url is not None and chromium is None:
                raise RuntimeError("bench-page needs Chromium (Debian's chromium)")
            time.sleep(5.0 if chromium else 0.0)  # the browser's own start-up is not the page's cost
            pids = _tree(chromium.pid) if chromium else []
            c0, s0, u0, t0 = _cpu_s(pids), _cpu_s([serve.proc.pid]), _underruns(serve.osc_port), time.monotonic()
            time.sleep(seconds)
            pids = sorted(set(pids) | set(_tree(chromium.pid))) if chromium else []
            c1, s1, u1, t1 = _cpu_s(pids), _cpu_s([serve.proc.pid]), _underruns(serve.osc_port), time.monotonic()
            phases.append(PagePhase(name, t1 - t0, c1 - c0 if chromium else None, s1 - s0, u1 - u0))
            say(f"bench-page: {name}: {format_phase(phases[-1])}")
            if chromium is not None:
                chromium.kill()
                chromium.wait()
    finally:
        serve.close()
    return phases


def format_phase(p: PagePhase) -> str:
    chromium = (
        "-" if p.chromium_cpu_s is None else f"{p.chromium_cpu_s:.1f} s ({100 * p.chromium_cpu_s / p.seconds:.0f} %)"
    )
    return (
        f"Chromium CPU {chromium}, serve CPU {p.serve_cpu_s:.1f} s ({100 * p.serve_cpu_s / p.seconds:.0f} %), "
        f"underruns {p.underruns} in {p.seconds:.0f} s"
    )


def format_page_bench(phases: list[PagePhase]) -> str:
    lines = ["the browser page beside serve (CPU time over each phase; 100 % = one core):"]
    lines += [f"  {p.name:22s} {format_phase(p)}" for p in phases]
    blank = next((p for p in phases if p.name == "blank page"), None)
    page = next((p for p in phases if p.name.startswith("the page")), None)
    if blank and page and blank.chromium_cpu_s is not None and page.chromium_cpu_s is not None:
        lines.append(
            f"  the page's own cost: {page.chromium_cpu_s - blank.chromium_cpu_s:.1f} s of CPU in {page.seconds:.0f} s"
        )
    return "\n".join(lines)
