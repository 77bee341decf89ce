"""Headless Chromium driven over the DevTools protocol, for tests of the browser page.

Real time, not virtual time: the page's AudioWorklet plays what the server sends. Chromium's helper
processes may still write into the profile after the browser exits, so the whole process group is
stopped and a leftover file in the throwaway profile is no failure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import pytest
from websockets.sync.client import connect


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    def __init__(self) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            pytest.fail("chromium is not installed: run scripts/setup.sh")
        self.port = _free_tcp_port()
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--autoplay-policy=no-user-gesture-required",
                f"--user-data-dir={self._profile.name}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._exit = contextlib.ExitStack()
        self.cdp = self._exit.enter_context(connect(self._page_socket(), max_size=None))

    def _page_socket(self) -> str:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("chromium's DevTools endpoint did not come up")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self._ids)
        self.cdp.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.cdp.recv(timeout=30))
            if msg.get("id") == i:
                return msg.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able), or None."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the page never got {expression!r}")

    def screenshot(self, path: str, width: int = 1100, height: int = 1000) -> bytes:
        """A PNG of the page as laid out at width x height CSS pixels, written to `path`."""
        import base64

        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        with open(path, "wb") as f:
            f.write(png)
        return png

    def close(self) -> None:
        try:
            self._exit.close()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self._profile.cleanup()
