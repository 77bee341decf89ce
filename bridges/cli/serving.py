"""The commands that run or talk to the live system: `serve`, `cluster`, `send`, and `config` /
`devices` to see what it would use."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .arguments import add_model_options, nonneg_float, positive_float, positive_int
from .settings import EXIT_USAGE, check_precision, kernels, load_model


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sv = sub.add_parser("serve", help="play endlessly; control it with lines on stdin (see README)")
    add_model_options(sv)
    sv.add_argument("--output", help="default | null | file:PATH | a device name or index ([stream] output)")
    sv.add_argument("--input", help="capture device for continue-input ([stream] input)")
    sv.add_argument(
        "--buffer-ms", type=positive_float, help="audio kept ready ahead of the output ([stream] buffer_ms)"
    )
    sv.add_argument("--prompt", dest="stream_prompt", help="the prompt to start with ([stream] prompt)")
    sv.add_argument(
        "--window", type=positive_float, dest="window_s", help="context window in seconds ([stream] window_s)"
    )
    sv.add_argument(
        "--context",
        type=positive_float,
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
    sv.add_argument("--seconds", type=positive_float, help="stop after this long (default: run until 'quit')")
    sv.add_argument(
        "--status-every",
        type=nonneg_float,
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
        type=positive_int,
        help="independent streams on one engine, stepped in one batch; session i listens on the "
        "OSC and WebSocket ports + i ([stream] sessions, 1)",
    )
    sv.add_argument(
        "--decode-frames",
        type=positive_int,
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
    add_model_options(cl)
    cl.add_argument("--address", help="a running Ray cluster ('auto', 'ray://head:10001'; [cluster] address)")
    cl.add_argument("--replicas", type=positive_int, help="engine replicas at start ([cluster] replicas, 1)")
    cl.add_argument(
        "--max-replicas", type=positive_int, help="autoscale up to this many replicas ([cluster] max_replicas)"
    )
    cl.add_argument(
        "--sessions-per-replica",
        type=positive_int,
        help="sessions one engine steps ([cluster] sessions_per_replica, 4)",
    )
    cl.add_argument(
        "--cpus-per-replica", type=positive_float, help="Ray CPUs of a replica ([cluster] cpus_per_replica)"
    )
    cl.add_argument("--gpus-per-replica", type=nonneg_float, help="Ray GPUs of a replica ([cluster] gpus_per_replica)")
    cl.add_argument("--host", dest="cluster_host", help="Serve's HTTP address ([cluster] host)")
    cl.add_argument("--port", dest="cluster_port", type=int, help="Serve's HTTP port ([cluster] port, 8000)")
    cl.add_argument("--prompt", dest="stream_prompt", help="the prompt each session starts with ([stream] prompt)")
    cl.add_argument("--seconds", type=positive_float, help="stop after this long (default: until Ctrl-C)")
    cl.add_argument(
        "--status-every", type=nonneg_float, default=10.0, help="a status line every this many seconds (0: none)"
    )

    sd = sub.add_parser("send", help="send one OSC message to a running serve and print the replies")
    sd.add_argument("address", help="e.g. /musicgen/cfg, or just cfg (the [osc] prefix is added)")
    sd.add_argument("args", nargs="*", help="arguments: numbers are sent as int or float, the rest as strings")
    sd.add_argument("--host", dest="osc_host", help="([osc] host)")
    sd.add_argument("--port", type=int, dest="osc_port", help="([osc] port)")
    sd.add_argument(
        "--timeout",
        type=nonneg_float,
        default=1.0,
        help="seconds to wait for replies in all (default 1; `send subscribe --timeout 30` listens 30 s)",
    )
    sd.add_argument("--count", type=positive_int, help="stop after this many replies")

    cf = sub.add_parser("config", help="print the settings that apply and where each comes from")
    cf.add_argument("--show", action="store_true", help="(the default action)")

    dv = sub.add_parser("devices", help="list audio devices")
    dv.add_argument("--json", action="store_true")


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
    model = load_model(args, streaming=True)
    if not model.streams:
        from musicgen_live.engine.errors import ContextError

        raise ContextError(
            f"{args.model} plays the '{model.codebook_pattern.describe()}' codebook pattern, which "
            "renders (render) but does not stream yet: serve plays delay patterns"
        )
    say(f"codebook pattern: {model.codebook_pattern.describe()}")
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
    from musicgen_live.bridges.cluster.app import start_cluster

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cluster = start_cluster(cluster_spec(args), say)
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


def cmd_send(args: argparse.Namespace) -> int:
    import socket

    from musicgen_live.bridges.osc import encode
    from musicgen_live.engine.errors import SetupError
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
            raise SetupError(f"cannot send to {host}:{port} ({e.strerror or e})") from None
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


def cluster_spec(args: argparse.Namespace):  # -> ClusterSpec (Ray is imported only by the cluster commands)
    from musicgen_live.bridges.cluster.spec import ClusterSpec

    check_precision(args)
    sec = args.sections
    return ClusterSpec(
        model=args.model,
        device=args.device,
        kernels=kernels(args),
        stream=sec["stream"],
        sampling=sec["sampling"],
        websocket=sec["websocket"],
        bridges=sec["bridges"],
        cluster=sec["cluster"],
    )


COMMANDS = {
    "serve": cmd_serve,
    "cluster": cmd_cluster,
    "send": cmd_send,
    "config": cmd_config,
    "devices": cmd_devices,
}
