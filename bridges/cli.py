"""`musicgen-live`: the command line, the outermost bridge (shell -> engine / streamer).

Every expected failure (bad path, bad value, damaged file) ends with one sentence on stderr and
exit status 2, never a traceback. Tracebacks mean bugs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine (and torch) load only when a command needs them
    from musicgen_live.engine.model import Kernels

EXIT_USAGE = 2
# command-line options (argparse dest) and the setting each stands for: an option left out takes the
# setting (config.toml, else the built-in default); an option given overrides it, checked the same way
OPTIONS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"),
    "device": ("model", "device"),
    "exact": ("model", "exact"),
    "precision": ("model", "precision"),
    "guidance": ("model", "guidance"),
    "kv": ("model", "kv"),
    "codec": ("model", "codec"),
    "cfg": ("sampling", "cfg"),
    "cfg_beta": ("sampling", "cfg_beta"),
    "temperature": ("sampling", "temperature"),
    "top_k": ("sampling", "top_k"),
    "top_p": ("sampling", "top_p"),
    "seed": ("sampling", "seed"),
    "output": ("stream", "output"),
    "input": ("stream", "input"),
    "buffer_ms": ("stream", "buffer_ms"),
    "window_s": ("stream", "window_s"),
    "context_s": ("stream", "context_s"),
    "autoplay": ("stream", "autoplay"),
    "sessions": ("stream", "sessions"),
    "extra_outputs": ("stream", "extra_outputs"),
    "decode_frames": ("stream", "decode_frames"),
    "slide_chunk": ("stream", "slide_chunk"),
    "stream_prompt": ("stream", "prompt"),
    "osc_host": ("osc", "host"),
    "osc_port": ("osc", "port"),
    "ws_port": ("websocket", "port"),
    "address": ("cluster", "address"),
    "replicas": ("cluster", "replicas"),
    "max_replicas": ("cluster", "max_replicas"),
    "sessions_per_replica": ("cluster", "sessions_per_replica"),
    "cpus_per_replica": ("cluster", "cpus_per_replica"),
    "gpus_per_replica": ("cluster", "gpus_per_replica"),
    "cluster_host": ("cluster", "host"),
    "cluster_port": ("cluster", "port"),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="built-in 'tiny' (random weights), a size name small|medium|large (random weights), each "
        "also NAME-stereo (8 codebooks, 2 channels), NAME-melody (melody-conditioned) or NAME-style "
        "(style-conditioned, as MusicGen-Style), a local checkpoint "
        "directory, or a hub id such as "
        "facebook/musicgen-small ([model] name)",
    )
    p.add_argument("--device", help="torch device, e.g. cpu or cuda ([model] device)")
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        help="use the parity kernels (token-exact with transformers) instead of the faster default",
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "float16", "int8", "int4"],
        help="how the live path stores the decoder's weights ([model] precision, float32); int8 is CPU only",
    )
    p.add_argument(
        "--guidance",
        choices=["auto", "batched", "two-step"],
        help="guidance's conditional and unconditional rows in one forward (batched) or two (two-step, as "
        "audiocraft's two_step_cfg); auto: as the checkpoint was trained ([model] guidance)",
    )
    p.add_argument(
        "--kv",
        choices=["float32", "float16", "int8"],
        help="how the self-attention cache is stored ([model] kv, float32); float16 reads half the bytes, "
        "int8 a quarter, through CPU kernels built once for this machine (needs a C++ compiler)",
    )
    p.add_argument(
        "--codec",
        choices=["float32", "int8"],
        help="the streaming decoder's large matrices ([model] codec, float32 = exact); int8 is CPU only",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-live", description="Real-time, endlessly streaming MusicGen.")
    parser.add_argument("--config", help="settings file (default: the repository's config.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="generate a finite piece offline into an audio file")
    _add_model(r)
    r.add_argument("--prompt", default="", help="text prompt")
    length = r.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=_positive_float, help="length to generate, in seconds")
    length.add_argument("--frames", type=_positive_int, help="length to generate, in codec frames")
    r.add_argument("--cfg", type=_nonneg_float, help="classifier-free guidance scale ([sampling] cfg, 3)")
    r.add_argument(
        "--cfg-beta",
        type=_nonneg_float,
        help="MusicGen-Style: double guidance, text against style ([sampling] cfg_beta, 0 = off)",
    )
    r.add_argument("--greedy", action="store_true", help="argmax decoding (deterministic)")
    r.add_argument("--temperature", type=_positive_float, help="([sampling] temperature, 1)")
    r.add_argument("--top-k", type=int, help="0 disables top-k ([sampling] top_k, 250)")
    r.add_argument("--top-p", type=float, help="0 disables top-p ([sampling] top_p, 0)")
    r.add_argument("--seed", type=int, help="([sampling] seed, 0)")
    r.add_argument("--prompt-audio", help="audio file to continue (any rate / channels / libsndfile format)")
    r.add_argument(
        "--melody",
        help="audio file whose melody (chroma, its first 30 s) conditions a MusicGen-Melody checkpoint; "
        "with no --prompt the melody alone conditions it",
    )
    r.add_argument(
        "--style",
        help="audio file whose style (its middle 3 s) conditions a MusicGen-Style checkpoint; "
        "with no --prompt the style alone conditions it",
    )
    r.add_argument(
        "--style-q",
        type=_positive_int,
        help="codebooks of the style quantizer to use, 1..6 (the checkpoint's eval_q, 3): more lets more of "
        "the excerpt through (audiocraft's set_style_conditioner_params eval_q)",
    )
    r.add_argument(
        "--style-excerpt",
        type=_positive_float,
        help="seconds of --style audio the style is taken from, its middle (the checkpoint's, 3)",
    )
    r.add_argument("--out", required=True, help="output audio: .wav (float), .flac or .npy")
    r.add_argument("--codes-out", help="also save the (codebooks, frames) int64 codes as .npy")
    r.add_argument(
        "--decode-chunk",
        type=_positive_int,
        default=25,
        help="frames per codec push (default 25; the audio is the same for any value)",
    )

    d = sub.add_parser("decode", help="decode a codes .npy to audio through the streaming decoder")
    _add_model(d)
    d.add_argument("--codes", required=True, help=".npy of shape (codebooks, frames), e.g. from render --codes-out")
    d.add_argument("--out", required=True, help="output: .wav, .flac or .npy (float32 samples)")
    d.add_argument("--chunk-frames", type=_positive_int, default=1, help="frames per decoder push (default 1)")

    b = sub.add_parser("bench", help="time generation, optionally against transformers in the same process")
    _add_model(b)
    b.add_argument("--frames", type=_positive_int, default=250, help="frames per run (default 250 = 5 s)")
    b.add_argument("--peer", action="store_true", help="also time transformers' generate on the same checkpoint")
    b.add_argument("--repeats", type=_positive_int, default=3, help="interleaved runs per side (default 3)")
    b.add_argument("--json", action="store_true", help="print the result as JSON as well")
    b.add_argument(
        "--decode-chunk",
        type=_positive_int,
        default=1,
        help="frames per codec push (default 1: audio released as soon as it is final, as live)",
    )
    b.add_argument(
        "--streams",
        type=_positive_int,
        nargs="+",
        default=[1],
        help="streams generated together in one batch (transformers: one batched generate); "
        "several counts run one after the other on the same checkpoint, e.g. --streams 1 2 4 8",
    )
    b.add_argument(
        "--quality",
        action="store_true",
        help="with a reduced --precision or --kv: compare its predictions with float32 (agreement, KL); with "
        "--codec int8: the codec's SNR against float32",
    )

    b.add_argument(
        "--outliers",
        action="store_true",
        help="give the decoder the outlier channels of trained models first (4 per layer norm, 30x louder, the "
        "same function in exact arithmetic): what breaks naive quantization; ours only (not --peer)",
    )

    sv = sub.add_parser("serve", help="play endlessly; control it with lines on stdin (see README)")
    _add_model(sv)
    sv.add_argument("--output", help="default | null | file:PATH | a device name or index ([stream] output)")
    sv.add_argument("--input", help="capture device for continue-input ([stream] input)")
    sv.add_argument(
        "--buffer-ms", type=_positive_float, help="audio kept ready ahead of the output ([stream] buffer_ms)"
    )
    sv.add_argument("--prompt", dest="stream_prompt", help="the prompt to start with ([stream] prompt)")
    sv.add_argument(
        "--window", type=_positive_float, dest="window_s", help="context window in seconds ([stream] window_s)"
    )
    sv.add_argument(
        "--context",
        type=_positive_float,
        dest="context_s",
        help="context kept when the window slides ([stream] context_s)",
    )
    sv.add_argument("--no-autoplay", action="store_false", dest="autoplay", default=None, help="wait for 'play'")
    sv.add_argument("--midi", metavar="PORT", help="MIDI input port, its name or a part of it ([midi] port)")
    sv.add_argument("--midi-api", choices=["alsa", "jack"], help="MIDI system ([midi] api, alsa)")
    sv.add_argument(
        "--midi-learn", action="store_true", help="print every MIDI message with the [midi] lines that would map it"
    )
    sv.add_argument(
        "--link",
        action="store_true",
        help="join the Ableton Link session on the local network; changes land on the next bar "
        "([link] enabled, tempo, quantum; 'quantize N' changes it live)",
    )
    sv.add_argument("--seconds", type=_positive_float, help="stop after this long (default: run until 'quit')")
    sv.add_argument(
        "--status-every",
        type=_nonneg_float,
        default=0.0,
        help="print a status line every this many seconds (default 0: only when something is wrong)",
    )
    sv.add_argument("--osc-port", type=int, help="OSC UDP port, 0 = off ([osc] port, 57130)")
    sv.add_argument("--ws-port", type=int, help="WebSocket + browser port, 0 = off ([websocket] port, 8765)")
    sv.add_argument(
        "--audio-dir", action="append", help="a folder continue/file may read (repeatable; [bridges] audio_dirs)"
    )
    sv.add_argument(
        "--sessions",
        type=_positive_int,
        help="independent streams on one engine, stepped in one batch; session i listens on the "
        "OSC and WebSocket ports + i ([stream] sessions, 1)",
    )
    sv.add_argument(
        "--decode-frames",
        type=_positive_int,
        help="frames gathered per codec push: 2 adds 20 ms of latency and saves ~25 %% of "
        "musicgen-small's decode time ([stream] decode_frames, 1)",
    )
    sv.add_argument(
        "--extra-output",
        action="append",
        dest="extra_outputs",
        help="output of session 2, 3, ... in order (repeatable; default null: hear them in the "
        "browser) ([stream] extra_outputs)",
    )

    cl = sub.add_parser(
        "cluster",
        help="many sessions on engine replicas of a Ray Serve application (needs the 'cluster' extra); "
        "the same WebSocket protocol and browser page as serve, one session a client",
    )
    _add_model(cl)
    cl.add_argument("--address", help="a running Ray cluster ('auto', 'ray://head:10001'; [cluster] address)")
    cl.add_argument("--replicas", type=_positive_int, help="engine replicas at start ([cluster] replicas, 1)")
    cl.add_argument(
        "--max-replicas", type=_positive_int, help="autoscale up to this many replicas ([cluster] max_replicas)"
    )
    cl.add_argument(
        "--sessions-per-replica",
        type=_positive_int,
        help="sessions one engine steps ([cluster] sessions_per_replica, 4)",
    )
    cl.add_argument(
        "--cpus-per-replica", type=_positive_float, help="Ray CPUs of a replica ([cluster] cpus_per_replica)"
    )
    cl.add_argument("--gpus-per-replica", type=_nonneg_float, help="Ray GPUs of a replica ([cluster] gpus_per_replica)")
    cl.add_argument("--host", dest="cluster_host", help="Serve's HTTP address ([cluster] host)")
    cl.add_argument("--port", dest="cluster_port", type=int, help="Serve's HTTP port ([cluster] port, 8000)")
    cl.add_argument("--prompt", dest="stream_prompt", help="the prompt each session starts with ([stream] prompt)")
    cl.add_argument("--seconds", type=_positive_float, help="stop after this long (default: until Ctrl-C)")
    cl.add_argument(
        "--status-every", type=_nonneg_float, default=10.0, help="a status line every this many seconds (0: none)"
    )

    bc = sub.add_parser(
        "bench-cluster",
        help="the cluster against plain serve: change latency, sessions per replica, recovery from a lost replica",
    )
    _add_model(bc)
    bc.add_argument("--replicas", type=_positive_int, help="engine replicas ([cluster] replicas)")
    bc.add_argument("--sessions-per-replica", type=_positive_int, help="([cluster] sessions_per_replica)")
    bc.add_argument("--cpus-per-replica", type=_positive_float, help="([cluster] cpus_per_replica)")
    bc.add_argument("--changes", type=_positive_int, default=20, help="gain changes timed through each (20)")
    bc.add_argument("--most-clients", type=_positive_int, default=16, help="stop adding clients here (16)")
    bc.add_argument("--stage", type=_positive_float, default=10.0, help="seconds each client count is measured")
    bc.add_argument("--kills", type=_nonneg_int, default=2, help="replicas killed, one at a time (2)")

    bm = sub.add_parser("bench-midi", help="a MIDI knob -> the change heard, through JACK MIDI (needs a JACK server)")
    _add_model(bm)
    bm.add_argument("--changes", type=int, default=100, help="CC changes to send (100)")

    bq = sub.add_parser("bench-quantize", help="how close to the bar quantized changes are heard (file output clock)")
    _add_model(bq)
    bq.add_argument("--bars", type=int, default=12, help="changes to send, one a bar (12)")
    bq.add_argument("--tempo", type=_positive_float, default=120.0, help="bpm of the steady beat clock (120)")
    bq.add_argument("--quantum", type=_positive_float, default=4.0, help="beats a bar (4)")

    bs = sub.add_parser("bench-stream", help="run a live session, send commands, report underruns and latencies")
    _add_model(bs)
    bs.add_argument("--output", help="default | null | file:PATH | a device ([stream] output)")
    bs.add_argument("--buffer-ms", type=_positive_float, help="([stream] buffer_ms)")
    bs.add_argument(
        "--window", type=_positive_float, dest="window_s", help="context window, seconds ([stream] window_s)"
    )
    bs.add_argument("--context", type=_positive_float, dest="context_s", help="([stream] context_s)")
    bs.add_argument("--seconds", type=_positive_float, default=60.0, help="how long to play (default 60)")
    bs.add_argument("--every", type=_positive_float, default=2.0, help="seconds between commands (default 2)")
    bs.add_argument(
        "--continue-seconds",
        type=_positive_float,
        default=12.0,
        help="length of the continuations it asks for, from the session's own output (default 12)",
    )
    bs.add_argument(
        "--slide-chunk",
        type=int,
        help="columns a slide or continuation prefills per step, 0 = measured ([stream] slide_chunk)",
    )
    bs.add_argument(
        "--sessions",
        type=_positive_int,
        help="sessions sharing the engine, stepped together; the others play other prompts to null ([stream] sessions)",
    )

    sd = sub.add_parser("send", help="send one OSC message to a running serve and print the replies")
    sd.add_argument("address", help="e.g. /musicgen/cfg, or just cfg (the [osc] prefix is added)")
    sd.add_argument("args", nargs="*", help="arguments: numbers are sent as int or float, the rest as strings")
    sd.add_argument("--host", dest="osc_host", help="([osc] host)")
    sd.add_argument("--port", type=int, dest="osc_port", help="([osc] port)")
    sd.add_argument(
        "--timeout",
        type=_nonneg_float,
        default=1.0,
        help="seconds to wait for replies in all (default 1; `send subscribe --timeout 30` listens 30 s)",
    )
    sd.add_argument("--count", type=_positive_int, help="stop after this many replies")

    bb = sub.add_parser("bench-bridges", help="OSC / WebSocket command -> audible latency, many WebSocket clients")
    _add_model(bb)
    bb.add_argument("--output", help="([stream] output)")
    bb.add_argument("--buffer-ms", type=_positive_float, help="([stream] buffer_ms)")
    bb.add_argument("--commands", type=_positive_int, default=20, help="commands per transport (default 20)")
    bb.add_argument("--clients", type=_positive_int, default=8, help="WebSocket audio clients (default 8)")
    bb.add_argument("--seconds", type=_positive_float, default=20.0, help="how long the clients listen (default 20)")

    sk = sub.add_parser(
        "soak",
        help="a long set against a real serve process over OSC and WebSocket: its memory every 30 s, "
        "unanswered requests, stalls; exits 1 past --bound",
    )
    sk.add_argument("--model", default="tiny", help="the model serve plays (default tiny)")
    sk.add_argument("--minutes", type=_positive_float, default=60.0, help="how long (default 60)")
    sk.add_argument(
        "--scenario",
        choices=["rotation", "random"],
        default="rotation",
        help="rotation: a change every 3 s, a continuation every 60 s; random: that and a random request of "
        "every kind every 0.2-2 s, bad files included (default rotation)",
    )
    sk.add_argument("--warmup", type=_nonneg_float, default=5.0, help="minutes before growth is counted (default 5)")
    sk.add_argument("--bound", type=_positive_float, default=5.0, help="RSS growth after the warm-up, %% (default 5)")
    sk.add_argument("--browser", action="store_true", help="the browser page plays in headless Chromium as well")
    sk.add_argument("--seed", type=int, default=1, help="the random requests' seed (default 1)")
    sk.add_argument(
        "--serve-from", type=Path, help="serve from another checkout's engine/, streamer/, bridges/ (before/after)"
    )
    sk.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: more serve options (--precision int8 ...)")

    bp = sub.add_parser(
        "bench-page",
        help="what the browser page costs beside a playing serve: Chromium's CPU time and serve's underruns, "
        "no browser / a blank page / the page listening",
    )
    bp.add_argument("--model", default="tiny", help="the model serve plays (default tiny)")
    bp.add_argument("--seconds", type=_positive_float, default=60.0, help="each phase (default 60)")
    bp.add_argument("--serve-from", type=Path, help="serve (and its page) from another checkout (before/after)")

    bh = sub.add_parser("bench-hostile", help="floods of bad input against a serve stack: the music's pace; a soak")
    _add_model(bh)
    bh.add_argument("--buffer-ms", type=_positive_float, help="([stream] buffer_ms)")
    bh.add_argument("--seconds", type=_positive_float, default=10.0, help="seconds each flood lasts (default 10)")
    bh.add_argument(
        "--soak-minutes",
        type=_nonneg_float,
        default=0.0,
        help="then play on this long with changes and continuations, sampling memory (default 0)",
    )

    cf = sub.add_parser("config", help="print the settings that apply and where each comes from")
    cf.add_argument("--show", action="store_true", help="(the default action)")

    dv = sub.add_parser("devices", help="list audio devices")
    dv.add_argument("--json", action="store_true")

    cb = sub.add_parser("bench-codec", help="time streaming decode against re-decoding the whole history")
    _add_model(cb)
    cb.add_argument("--seconds", type=_positive_float, nargs="+", default=[5.0, 15.0, 30.0])
    cb.add_argument("--chunk-frames", type=_positive_int, default=1)
    cb.add_argument(
        "--encode-pieces",
        type=_nonneg_int,
        nargs="+",
        help="time the encoder instead: ms a frame at these frames a piece (0 = the whole clip), interleaved",
    )
    cb.add_argument("--encode-seconds", type=_positive_float, default=12.0, help="audio the encoder bench encodes")

    bx = sub.add_parser(
        "bench-matrices", help="a decoder's matrices at each weight format, read from memory as a live step reads them"
    )
    bx.add_argument("--model", default="small", help="a built-in size (its shapes; random weights)")
    bx.add_argument("--formats", nargs="+", default=["int8", "int4"], help="weight formats (--precision values)")
    bx.add_argument("--rows", type=_positive_int, nargs="+", default=[2, 3, 8], help="rows a call (2: a guided stream)")
    bx.add_argument(
        "--threads",
        type=_positive_int,
        nargs="+",
        help="instead: a step's matrices at the first --rows with each of these thread counts, interleaved",
    )

    bt = sub.add_parser(
        "bench-step", help="where a live step's time goes (forward, codec, the rest), weight formats side by side"
    )
    bt.add_argument("--model", default="small", help="a built-in size, a directory or a hub id (default small)")
    bt.add_argument(
        "--precisions",
        nargs="+",
        default=["int8", "int4"],
        help="weight formats, interleaved; PRECISION/KV for a cache type other than --kv (e.g. int4/int8), "
        "PRECISION/KV/python or .../compiled for how the codec runs (e.g. int4/float16/python)",
    )
    bt.add_argument("--warmup", type=_positive_int, default=20, help="untimed steps first (1200: late in the window)")
    bt.add_argument("--kv", default="float16", help="KV cache type for every format (default float16)")
    bt.add_argument("--codec", default="int8", help="codec precision for every format (default int8)")
    bt.add_argument("--rounds", type=_positive_int, default=6, help="interleaved rounds (default 6)")
    bt.add_argument("--steps", type=_positive_int, default=50, help="steps a format a round (default 50)")

    bw = sub.add_parser(
        "bench-window",
        help="what a shorter live window (and the context it keeps) does to the predictions, against one long window",
    )
    _add_model(bw)
    bw.add_argument(
        "windows",
        nargs="+",
        type=_window_spec,
        metavar="WINDOW/CONTEXT",
        help="live windows to compare, in seconds, e.g. 20/8 10/4 (the context is what a slide keeps)",
    )
    bw.add_argument(
        "--reference", type=_positive_float, default=30.0, help="seconds held in one window to compare against (30)"
    )
    bw.add_argument("--prompt", default="lo-fi hip hop beat with warm keys", help="the prompt of the compared run")
    return parser


def _window_spec(text: str) -> tuple[float, float]:
    """'20/8' -> (20.0, 8.0): a window and the context it keeps, in seconds."""
    window, sep, context = text.partition("/")
    try:
        if not sep:
            raise ValueError
        w, c = float(window), float(context)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not WINDOW/CONTEXT in seconds, e.g. 20/8") from None
    if not (0 < c < w and math.isfinite(w)):
        raise argparse.ArgumentTypeError(f"'{text}': the context must be above 0 and shorter than the window")
    return w, c


def main(argv: Sequence[str] | None = None) -> int:
    from musicgen_live.streamer.openmp import bound_primitive_cache, limit_spinning

    limit_spinning()  # before anything loads torch
    bound_primitive_cache()
    args = build_parser().parse_args(argv)
    from musicgen_live.engine.errors import EngineError

    try:
        _apply_config(args)
        return COMMANDS[args.command](args)
    except EngineError as e:
        print(f"musicgen-live {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `musicgen-live config | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _schema() -> dict[str, type]:
    from musicgen_live.bridges.config import (
        BridgesConfig,
        ClusterConfig,
        LinkConfig,
        MidiConfig,
        OscConfig,
        WebSocketConfig,
    )
    from musicgen_live.engine.config import ModelConfig, SamplingConfig
    from musicgen_live.streamer.config import StreamConfig

    return {
        "model": ModelConfig,
        "sampling": SamplingConfig,
        "stream": StreamConfig,
        "osc": OscConfig,
        "websocket": WebSocketConfig,
        "bridges": BridgesConfig,
        "link": LinkConfig,
        "midi": MidiConfig,
        "cluster": ClusterConfig,
    }


def _apply_config(args: argparse.Namespace) -> None:
    """Options left out take their setting (`OPTIONS`); options given override the settings, checked
    like the file. `args.sections` holds the settings that apply."""
    from musicgen_live.engine.config import load_sections, override

    sections = load_sections(args.config, _schema())
    changes: dict[str, dict[str, object]] = {name: {} for name in sections}
    for dest, (name, key) in OPTIONS.items():
        if not hasattr(args, dest):
            continue
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(sections[name], key))
        else:
            changes[name][key] = getattr(args, dest)
    args.sections = {name: override(section, name, changes[name]) for name, section in sections.items()}


def _load(args: argparse.Namespace, streaming: bool = False):  # -> MusicGen
    """The model `args` name. `streaming`: for a process whose generation thread must own torch's
    CPU pool (`streamer.threads`): this (main) thread is confined to one core and the model is
    loaded on a short-lived thread."""
    import torch
    from musicgen_live.engine.errors import CheckpointError
    from musicgen_live.engine.model import MusicGen

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device '{args.device}' was asked for but no CUDA GPU is available")
    _check_precision(args)
    if args.exact and args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    load = lambda: MusicGen.load(args.model, device=args.device, **_kernels(args))  # noqa: E731
    if not streaming:
        return load()
    from musicgen_live.streamer import threads

    threads.confine()
    return threads.on_pool_thread(load)


def _kernels(args: argparse.Namespace) -> Kernels:
    return {
        "exact": args.exact,
        "precision": args.precision,
        "guidance": args.guidance,
        "kv": args.kv,
        "codec": args.codec,
    }


def _check_precision(args: argparse.Namespace) -> None:
    """Refuse an impossible precision (weights, KV cache, codec) before minutes of loading, in one sentence."""
    import torch
    from musicgen_live.engine.codec import check_codec_precision
    from musicgen_live.engine.kvcache import check_kv
    from musicgen_live.engine.linear import check_precision

    device = torch.device(args.device)
    check_precision(args.precision, device, args.exact)
    check_kv(args.kv, device, args.exact)
    check_codec_precision(args.codec, device, args.exact)


def cmd_render(args: argparse.Namespace) -> int:
    from musicgen_live.engine.audiofile import read_audio, write_audio
    from musicgen_live.engine.errors import ContextError
    from musicgen_live.engine.render import render
    from musicgen_live.engine.sampling import SamplingParams

    _check_output(args.out, (".wav", ".flac", ".npy"))
    if args.codes_out:
        _check_output(args.codes_out, (".npy",))
    try:
        params = SamplingParams(
            greedy=args.greedy,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            cfg=args.cfg,
            cfg_beta=args.cfg_beta or None,
        ).validated()
    except ValueError as e:
        raise ContextError(str(e)) from None
    model = _load(args)
    frames = args.frames if args.frames else model.spec.seconds_to_frames(args.seconds)
    if frames <= 0:
        raise ContextError(f"{args.seconds} s is shorter than one frame")
    audio = None
    if args.prompt_audio:
        audio = read_audio(args.prompt_audio, model.sample_rate, model.audio_channels)
    if model.style is not None or args.style is not None:
        condition = _style_condition(model, args.prompt, args.style, params, args.style_q, args.style_excerpt)
    else:
        condition = _melody_condition(model, args.prompt, args.melody, guided=params.cfg != 1.0)
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 1.0 or done == total:
            last[0] = now
            print(f"\rgenerating: {done}/{total} frames", end="", file=sys.stderr, flush=True)

    out = render(
        model,
        args.prompt,
        frames,
        params,
        seed=args.seed,
        prompt_audio=audio,
        progress=progress,
        decode_chunk=args.decode_chunk,
        condition=condition,
    )
    took = time.perf_counter() - t0
    print(file=sys.stderr)
    write_audio(args.out, out.audio, model.sample_rate)
    if args.codes_out:
        import numpy as np

        np.save(args.codes_out, out.codes.numpy().astype(np.int64))
    seconds = out.audio.shape[-1] / model.sample_rate
    print(f"wrote {args.out}: {seconds:.2f} s in {took:.1f} s ({frames / took:.1f} frames/s)", file=sys.stderr)
    return 0


def _melody_condition(model, prompt: str, melody: str | None, guided: bool):  # noqa: ANN001, ANN202
    """A melody checkpoint's condition for `render` (None: a text-only checkpoint's own path)."""
    from musicgen_live.engine.audiofile import read_audio
    from musicgen_live.engine.errors import ContextError

    if melody is None:
        return model.melody_condition(prompt, None, guided) if model.melody else None
    if not model.melody:
        raise ContextError(f"--melody needs a MusicGen-Melody checkpoint; '{model.source}' is conditioned on text only")
    audio = read_audio(melody, model.chroma.settings.sample_rate, 1)
    return model.melody_condition(prompt or None, audio, guided)


def _style_condition(model, prompt: str, style: str | None, params, eval_q, excerpt_s):  # noqa: ANN001, ANN202
    """A MusicGen-Style checkpoint's condition for `render`: text and/or the style of a file. Guidance
    runs as audiocraft runs it: three rows with cfg_beta, two without, one at cfg 1."""
    from musicgen_live.engine.audiofile import read_audio
    from musicgen_live.engine.errors import ContextError

    if model.style is None:
        raise ContextError(f"--style needs a MusicGen-Style checkpoint; '{model.source}' has no style conditioner")
    if style is None and (eval_q is not None or excerpt_s is not None):
        raise ContextError("--style-q and --style-excerpt shape the style of --style FILE; give one")
    audio = None if style is None else read_audio(style, model.sample_rate, 1)
    guided = params.cfg != 1.0 or params.cfg_beta is not None
    double = params.cfg_beta is not None
    return model.style_condition(prompt or None, audio, guided, double, eval_q=eval_q, excerpt_s=excerpt_s)


def cmd_decode(args: argparse.Namespace) -> int:
    from musicgen_live.engine.audiofile import write_audio
    from musicgen_live.engine.render import decode_streamed, load_codes

    _check_output(args.out, (".wav", ".flac", ".npy"))
    model = _load(args)
    codes = load_codes(args.codes, model)
    audio = decode_streamed(model, codes, args.chunk_frames)
    write_audio(args.out, audio, model.sample_rate)
    print(f"wrote {args.out}: {audio.shape[-1] / model.sample_rate:.2f} s", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from musicgen_live.engine.bench import as_dict, format_result, run_bench

    _check_precision(args)
    result = run_bench(
        args.model,
        args.frames,
        args.peer,
        repeats=args.repeats,
        device=args.device,
        decode_chunk=args.decode_chunk,
        streams=args.streams,
        quality=args.quality,
        outliers=args.outliers,
        say=lambda m: print(m, file=sys.stderr),
        **_kernels(args),
    )
    for r in result:
        print(format_result(r))
        if args.json:
            print(json.dumps(as_dict(r)))
    return 0


def cmd_bench_window(args: argparse.Namespace) -> int:
    from musicgen_live.engine.quality import compare_windows, format_window_quality

    model = _load(args)
    rate = model.spec.frame_rate
    frames = round(args.reference * rate)
    windows = [(round(w * rate), round(c * rate)) for w, c in args.windows]
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    results = compare_windows(model, args.prompt, windows, frames, say=say)
    print(f"window quality of {args.model} ({model.lm.precision}, kv {model.lm.kv}), teacher-forced, cfg 3:")
    for q in results:
        print(format_window_quality(q))
    return 0


def cmd_bench_matrices(args: argparse.Namespace) -> int:
    from musicgen_live.engine.bench_matrices import format_matrix_bench, run_matrix_bench
    from musicgen_live.engine.linear import PRECISIONS

    bad = [f for f in args.formats if f not in PRECISIONS]
    if bad:
        print(f"error: unknown format {', '.join(bad)} (choose from {', '.join(PRECISIONS)})", file=sys.stderr)
        return 2
    if args.threads:
        from musicgen_live.engine.bench_matrices import format_thread_line, run_thread_bench

        for n, b in run_thread_bench(args.model, tuple(args.formats), args.rows[0], tuple(args.threads)):
            print(format_thread_line(n, b), flush=True)
        return 0
    bench = run_matrix_bench(args.model, tuple(args.formats), tuple(args.rows), say=print)
    print(format_matrix_bench(bench))
    return 0


def cmd_bench_step(args: argparse.Namespace) -> int:
    from musicgen_live.engine.bench_step import format_step_bench, run_step_bench
    from musicgen_live.engine.errors import EngineError

    try:
        say = lambda line: print(line, flush=True)  # noqa: E731
        splits = run_step_bench(
            args.model, args.precisions, args.kv, args.codec, args.rounds, args.steps, warmup=args.warmup, say=say
        )
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_step_bench(args.model, args.kv, args.codec, splits))
    return 0


def cmd_bench_codec(args: argparse.Namespace) -> int:
    from musicgen_live.engine.codec_bench import (
        codec_fidelity,
        format_codec_bench,
        format_encoder_bench,
        format_fidelity,
        run_codec_bench,
        run_encoder_bench,
    )

    model = _load(args)
    if args.encode_pieces:
        costs = run_encoder_bench(model.codec, args.encode_seconds, args.encode_pieces)
        print(format_encoder_bench(args.encode_seconds, costs))
        return 0
    print(format_codec_bench(run_codec_bench(model.codec, args.seconds, args.chunk_frames)))
    if model.codec.precision != "float32":
        print(format_fidelity(codec_fidelity(model.codec.with_precision("float32"), model.codec)))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from musicgen_live.streamer.devices import list_devices

    devices = list_devices()
    if args.json:
        print(json.dumps(devices))
        return 0
    if not devices:
        print("no audio devices found (use --output null or file:PATH)")
    for d in devices:
        print(
            f"{d['index']:3d}  {d['name']}  [{d['hostapi']}]  in {d['inputs']}  out {d['outputs']}  "
            f"{d['default_rate']:.0f} Hz"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from musicgen_live.bridges.server import serve_forever
    from musicgen_live.engine.model import model_summary
    from musicgen_live.streamer.group import SessionGroup
    from musicgen_live.streamer.lines import LineWriter
    from musicgen_live.streamer.outputs import InputCapture, make_output_or_null
    from musicgen_live.streamer.session import Session

    stream = args.sections["stream"]
    osc = args.sections["osc"]
    ws = args.sections["websocket"]
    bridges = args.sections["bridges"]
    link = args.sections["link"]
    if args.link:
        link = dataclasses.replace(link, enabled=True)
    midi = args.sections["midi"]
    if args.midi is not None:
        midi = dataclasses.replace(midi, port=args.midi)
    if args.midi_api is not None:
        midi = dataclasses.replace(midi, api=args.midi_api)
    osc = dataclasses.replace(osc, enabled=osc.enabled and osc.port > 0)  # port 0: off
    ws = dataclasses.replace(ws, enabled=ws.enabled and ws.port > 0)
    if args.audio_dir:
        bridges = dataclasses.replace(bridges, audio_dirs=list(bridges.audio_dirs) + args.audio_dir)
    say = LineWriter(sys.stderr)  # the generation thread logs too: a stderr nobody reads must not stop it
    model = _load(args, streaming=True)
    channels = max(2, model.audio_channels)
    sampling = args.sections["sampling"]
    sessions = []
    for i in range(stream.sessions):
        spec = (
            stream.output if i == 0 else (stream.extra_outputs[i - 1] if i - 1 < len(stream.extra_outputs) else "null")
        )
        out = make_output_or_null(spec, channels, stream.buffer_ms / 1000, stream.blocksize, say)
        capture = InputCapture(stream.input) if stream.input and i == 0 else None
        seeded = dataclasses.replace(sampling, seed=sampling.seed + i)  # sessions differ from the start
        sessions.append(Session(model, out, stream, seeded, capture, log=say))
        say(f"{f'session {i + 1}: ' if stream.sessions > 1 else ''}playing to {out.describe()}")
    group = SessionGroup(model, max_sessions=len(sessions), stall_s=stream.stall_s) if len(sessions) > 1 else None
    asyncio.run(
        serve_forever(
            sessions if group else sessions[0],
            osc,
            ws,
            bridges,
            model_summary(model),
            args.seconds,
            args.status_every,
            say,
            stdin=sys.stdin,
            group=group,
            link=link,
            midi=midi,
            midi_learn=args.midi_learn,
        )
    )
    say.flush()
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.cluster_app import start_cluster

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cluster = start_cluster(_cluster_spec(args), say)
    t0 = last = time.monotonic()
    try:
        while not args.seconds or time.monotonic() - t0 < args.seconds:
            time.sleep(0.2)
            if args.status_every and time.monotonic() - last >= args.status_every:
                last = time.monotonic()
                say(cluster.status_line())
    finally:
        cluster.close()
        say("cluster stopped")
    return 0


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench_cluster import format_cluster_bench, run_cluster_bench

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    spec = _cluster_spec(args)
    print(format_cluster_bench(run_cluster_bench(spec, args.changes, args.most_clients, args.stage, args.kills, say)))
    return 0


def _cluster_spec(args: argparse.Namespace):  # -> ClusterSpec (Ray is imported only by the cluster commands)
    from musicgen_live.bridges.cluster import ClusterSpec

    _check_precision(args)
    sec = args.sections
    return ClusterSpec(
        model=args.model,
        device=args.device,
        kernels=_kernels(args),
        stream=sec["stream"],
        sampling=sec["sampling"],
        websocket=sec["websocket"],
        bridges=sec["bridges"],
        cluster=sec["cluster"],
    )


def cmd_bench_bridges(args: argparse.Namespace) -> int:

    from musicgen_live.bridges.bench_bridges import format_bridge_bench, run_bridge_bench

    stream = args.sections["stream"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = _load(args)
    result = run_bridge_bench(model, args.output, stream, args.commands, args.clients, args.seconds, say)
    print(format_bridge_bench(result))
    return 0


def cmd_bench_hostile(args: argparse.Namespace) -> int:

    from musicgen_live.bridges.bench_hostile import format_hostile_bench, run_hostile_bench

    stream = args.sections["stream"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = _load(args, streaming=True)
    print(format_hostile_bench(run_hostile_bench(model, stream, args.seconds, args.soak_minutes, say)))
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.soak import format_soak, run_soak

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    extra = [a for a in args.serve_args if a != "--"]
    result = run_soak(
        args.model, args.minutes, args.scenario, args.warmup, extra, args.browser, say, args.seed, args.serve_from
    )
    print(format_soak(result, args.bound))
    return 1 if result.problems(args.bound) else 0


def cmd_bench_page(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench_page import format_page_bench, run_page_bench

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    print(format_page_bench(run_page_bench(args.model, args.seconds, say, args.serve_from)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import tomllib
    from dataclasses import fields

    from musicgen_live.engine.config import DEFAULT_PATH

    path = Path(args.config) if args.config else DEFAULT_PATH
    raw = tomllib.loads(path.read_text()) if path.is_file() else {}
    print(f"# the settings that apply: from {path if raw else 'the built-in defaults (no config file)'}")
    for name, section in args.sections.items():
        print(f"\n[{name}]")
        for f in fields(section):
            value = getattr(section, f.name)
            origin = "config file" if f.name in raw.get(name, {}) else "default"
            print(f"{f.name} = {json.dumps(value)}".ljust(40) + f"  # {origin}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import socket

    from musicgen_live.bridges.osc import encode
    from musicgen_live.engine.errors import EngineError
    from pythonosc.osc_message import OscMessage

    osc = args.sections["osc"]
    host, port = osc.host, osc.port
    prefix = "/" + osc.prefix.strip("/")
    address = args.address if args.address.startswith("/") else f"{prefix}/{args.address}"
    values: list[object] = []
    for a in args.args:
        try:
            values.append(int(a))
        except ValueError:
            try:
                values.append(float(a))
            except ValueError:
                values.append(a)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        try:
            sock.sendto(encode(address, tuple(values)), (host, port))
        except OSError as e:
            raise EngineError(f"cannot send to {host}:{port} ({e.strerror or e})") from None
        errors, replies, end = 0, 0, time.monotonic() + args.timeout
        while (left := end - time.monotonic()) > 0 and (args.count is None or replies < args.count):
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(65536)
            except (TimeoutError, ConnectionRefusedError):
                break
            msg = OscMessage(data)
            replies += 1
            errors += msg.address.endswith("/error")
            print(msg.address, *msg.params, flush=True)
    return EXIT_USAGE if errors else 0


def cmd_bench_midi(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench_midi import format_midi_bench, run_midi_bench

    model = _load(args, streaming=True)
    print(format_midi_bench(run_midi_bench(model, args.changes)))
    return 0


def cmd_bench_quantize(args: argparse.Namespace) -> int:
    from musicgen_live.streamer.bench_quantize import format_quantize_bench, run_quantize_bench

    model = _load(args, streaming=True)
    print(format_quantize_bench(run_quantize_bench(model, args.bars, args.tempo, args.quantum)))
    return 0


def cmd_bench_stream(args: argparse.Namespace) -> int:

    from musicgen_live.streamer.bench_stream import format_stream_bench, run_stream_bench
    from musicgen_live.streamer.outputs import make_output_or_null

    stream = args.sections["stream"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = _load(args, streaming=True)
    out = make_output_or_null(
        stream.output, max(2, model.audio_channels), stream.buffer_ms / 1000, stream.blocksize, say
    )
    print(
        format_stream_bench(
            run_stream_bench(
                model,
                out,
                stream,
                args.seconds,
                args.every,
                say,
                continue_s=args.continue_seconds,
                companions=args.sessions - 1,
            )
        )
    )
    return 0


def _check_output(path: str, suffixes: tuple[str, ...]) -> None:
    from musicgen_live.engine.errors import AudioInputError

    if not path.lower().endswith(suffixes):
        raise AudioInputError(f"'{path}': the output must end in {' or '.join(suffixes)}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise AudioInputError(f"cannot write '{path}': folder '{parent}' does not exist")


COMMANDS = {
    "render": cmd_render,
    "decode": cmd_decode,
    "bench": cmd_bench,
    "bench-codec": cmd_bench_codec,
    "bench-window": cmd_bench_window,
    "bench-matrices": cmd_bench_matrices,
    "bench-step": cmd_bench_step,
    "serve": cmd_serve,
    "cluster": cmd_cluster,
    "bench-cluster": cmd_bench_cluster,
    "bench-stream": cmd_bench_stream,
    "bench-quantize": cmd_bench_quantize,
    "bench-midi": cmd_bench_midi,
    "send": cmd_send,
    "bench-bridges": cmd_bench_bridges,
    "bench-hostile": cmd_bench_hostile,
    "soak": cmd_soak,
    "bench-page": cmd_bench_page,
    "devices": cmd_devices,
    "config": cmd_config,
}

if __name__ == "__main__":
    sys.exit(main())
