"""The built wheel works anywhere: installed into a fresh virtual environment, away from the
repository, it finds its default settings and serves the browser page. Protects: package data (the
web client, config.toml) in the wheel, the distinctive package name musicgen_live.*, the console
script."""

from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_serves_the_page(tmp_path):
    dist, env = tmp_path / "dist", tmp_path / "venv"
    pip_quiet = ["--disable-pip-version-check", "-q"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *pip_quiet, "--no-deps", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(dist.glob("musicgen_live-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    # the heavy dependencies (torch, transformers ...) come from this environment; the package itself
    # comes only from the wheel
    (
        env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "deps.pth"
    ).write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([env / "bin" / "pip", "install", *pip_quiet, "--no-deps", str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exe = env / "bin" / "musicgen-live"

    def python(code: str) -> str:
        return subprocess.run(
            [env / "bin" / "python", "-c", code], cwd=elsewhere, capture_output=True, text=True, check=True
        ).stdout.strip()

    where = python("import musicgen_live.bridges.ws as w; print(w.__file__)")
    assert str(env) in where and str(REPO) not in where  # from the wheel, not from this checkout
    # the CPU kernels' sources and headers ship with the package
    shipped = python("from musicgen_live.engine.cpu_kernels import KERNELS; print([p.name for p in KERNELS.iterdir()])")
    want = ["decode_attention.cpp", "int4_linear.cpp", "decoder_step.cpp", "decoder_step.h", "kernels.h", "module.cpp"]
    assert all(name in shipped for name in want), shipped
    shown = subprocess.run([exe, "config"], cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert "site-packages/musicgen_live/config.toml" in shown and 'name = "tiny"' in shown
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = subprocess.Popen(
        [exe, "serve", "--output", "null", "--osc-port", "0", "--ws-port", str(port), "--seconds", "60"],
        cwd=elsewhere,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    try:
        page = ""
        deadline = time.time() + 90
        while time.time() < deadline and not page:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert "<title>musicgen-live</title>" in page
        script = urllib.request.urlopen(f"http://127.0.0.1:{port}/client.js", timeout=5).read().decode()
        assert "session.update" in script
    finally:
        serve.terminate()
        err = serve.communicate(timeout=30)[1]
    assert "Traceback" not in err, err
