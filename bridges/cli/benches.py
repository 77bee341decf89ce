"""The `bench-*` commands and `soak`: each runs a measurement module and prints its report
(BENCHMARKS.md records the commands and their figures)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .arguments import add_model_options, nonneg_float, nonneg_int, positive_float, positive_int, window_spec
from .serving import cluster_spec
from .settings import check_precision, kernels, load_model, parse_pattern


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("bench", help="time generation, optionally against transformers in the same process")
    add_model_options(b)
    b.add_argument("--frames", type=positive_int, default=250, help="frames per run (default 250 = 5 s)")
    b.add_argument("--peer", action="store_true", help="also time transformers' generate on the same checkpoint")
    b.add_argument("--repeats", type=positive_int, default=3, help="interleaved runs per side (default 3)")
    b.add_argument("--json", action="store_true", help="print the result as JSON as well")
    b.add_argument(
        "--decode-chunk",
        type=positive_int,
        default=1,
        help="frames per codec push (default 1: audio released as soon as it is final, as live)",
    )
    b.add_argument(
        "--streams",
        type=positive_int,
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

    bp = sub.add_parser("bench-patterns", help="what each codebook pattern costs: steps/s and frames/s side by side")
    add_model_options(bp)
    bp.add_argument(
        "--patterns",
        nargs="+",
        default=["delay", "unroll:flattening=0,1,1,1", "unroll"],
        help="patterns to compare, as --pattern spells them (default: delay, partial flattening, flattening)",
    )
    bp.add_argument("--frames", type=positive_int, default=250, help="frames a run (default 250 = 5 s)")
    bp.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds (default 3)")
    bw = sub.add_parser(
        "bench-window",
        help="what a shorter live window (and the context it keeps) does to the predictions, against one long window",
    )
    add_model_options(bw)
    bw.add_argument(
        "windows",
        nargs="+",
        type=window_spec,
        metavar="WINDOW/CONTEXT",
        help="live windows to compare, in seconds, e.g. 20/8 10/4 (the context is what a slide keeps)",
    )
    bw.add_argument(
        "--reference", type=positive_float, default=30.0, help="seconds held in one window to compare against (30)"
    )
    bw.add_argument("--prompt", default="lo-fi hip hop beat with warm keys", help="the prompt of the compared run")

    bx = sub.add_parser(
        "bench-matrices", help="a decoder's matrices at each weight format, read from memory as a live step reads them"
    )
    bx.add_argument("--model", default="small", help="a built-in size (its shapes; random weights)")
    bx.add_argument("--formats", nargs="+", default=["int8", "int4"], help="weight formats (--precision values)")
    bx.add_argument("--rows", type=positive_int, nargs="+", default=[2, 3, 8], help="rows a call (2: a guided stream)")
    bx.add_argument(
        "--threads",
        type=positive_int,
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
    bt.add_argument("--warmup", type=positive_int, default=20, help="untimed steps first (1200: late in the window)")
    bt.add_argument("--kv", default="float16", help="KV cache type for every format (default float16)")
    bt.add_argument("--codec", default="int8", help="codec precision for every format (default int8)")
    bt.add_argument("--rounds", type=positive_int, default=6, help="interleaved rounds (default 6)")
    bt.add_argument("--steps", type=positive_int, default=50, help="steps a format a round (default 50)")

    cb = sub.add_parser("bench-codec", help="time streaming decode against re-decoding the whole history")
    add_model_options(cb)
    cb.add_argument("--seconds", type=positive_float, nargs="+", default=[5.0, 15.0, 30.0])
    cb.add_argument("--chunk-frames", type=positive_int, default=1)
    cb.add_argument(
        "--encode-pieces",
        type=nonneg_int,
        nargs="+",
        help="time the encoder instead: ms a frame at these frames a piece (0 = the whole clip), interleaved",
    )
    cb.add_argument("--encode-seconds", type=positive_float, default=12.0, help="audio the encoder bench encodes")

    bs = sub.add_parser("bench-stream", help="run a live session, send commands, report underruns and latencies")
    add_model_options(bs)
    bs.add_argument("--output", help="default | null | file:PATH | a device ([stream] output)")
    bs.add_argument("--buffer-ms", type=positive_float, help="([stream] buffer_ms)")
    bs.add_argument(
        "--window", type=positive_float, dest="window_s", help="context window, seconds ([stream] window_s)"
    )
    bs.add_argument("--context", type=positive_float, dest="context_s", help="([stream] context_s)")
    bs.add_argument("--seconds", type=positive_float, default=60.0, help="how long to play (default 60)")
    bs.add_argument("--every", type=positive_float, default=2.0, help="seconds between commands (default 2)")
    bs.add_argument(
        "--continue-seconds",
        type=positive_float,
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
        type=positive_int,
        help="sessions sharing the engine, stepped together; the others play other prompts to null ([stream] sessions)",
    )

    bq = sub.add_parser("bench-quantize", help="how close to the bar quantized changes are heard (file output clock)")
    add_model_options(bq)
    bq.add_argument("--bars", type=int, default=12, help="changes to send, one a bar (12)")
    bq.add_argument("--tempo", type=positive_float, default=120.0, help="bpm of the steady beat clock (120)")
    bq.add_argument("--quantum", type=positive_float, default=4.0, help="beats a bar (4)")

    bm = sub.add_parser("bench-midi", help="a MIDI knob -> the change heard, through JACK MIDI (needs a JACK server)")
    add_model_options(bm)
    bm.add_argument("--changes", type=int, default=100, help="CC changes to send (100)")

    bb = sub.add_parser("bench-bridges", help="OSC / WebSocket command -> audible latency, many WebSocket clients")
    add_model_options(bb)
    bb.add_argument("--output", help="([stream] output)")
    bb.add_argument("--buffer-ms", type=positive_float, help="([stream] buffer_ms)")
    bb.add_argument("--commands", type=positive_int, default=20, help="commands per transport (default 20)")
    bb.add_argument("--clients", type=positive_int, default=8, help="WebSocket audio clients (default 8)")
    bb.add_argument("--seconds", type=positive_float, default=20.0, help="how long the clients listen (default 20)")

    sk = sub.add_parser(
        "soak",
        help="a long set against a real serve process over OSC and WebSocket: its memory every 30 s, "
        "unanswered requests, stalls; exits 1 past --bound",
    )
    sk.add_argument("--model", default="tiny", help="the model serve plays (default tiny)")
    sk.add_argument("--minutes", type=positive_float, default=60.0, help="how long (default 60)")
    sk.add_argument(
        "--scenario",
        choices=["rotation", "random"],
        default="rotation",
        help="rotation: a change every 3 s, a continuation every 60 s; random: that and a random request of "
        "every kind every 0.2-2 s, bad files included (default rotation)",
    )
    sk.add_argument("--warmup", type=nonneg_float, default=5.0, help="minutes before growth is counted (default 5)")
    sk.add_argument("--bound", type=positive_float, default=5.0, help="RSS growth after the warm-up, %% (default 5)")
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
    bp.add_argument("--seconds", type=positive_float, default=60.0, help="each phase (default 60)")
    bp.add_argument("--serve-from", type=Path, help="serve (and its page) from another checkout (before/after)")

    bh = sub.add_parser("bench-hostile", help="floods of bad input against a serve stack: the music's pace; a soak")
    add_model_options(bh)
    bh.add_argument("--buffer-ms", type=positive_float, help="([stream] buffer_ms)")
    bh.add_argument("--seconds", type=positive_float, default=10.0, help="seconds each flood lasts (default 10)")
    bh.add_argument(
        "--soak-minutes",
        type=nonneg_float,
        default=0.0,
        help="then play on this long with changes and continuations, sampling memory (default 0)",
    )

    bc = sub.add_parser(
        "bench-cluster",
        help="the cluster against plain serve: change latency, sessions per replica, recovery from a lost replica",
    )
    add_model_options(bc)
    bc.add_argument("--replicas", type=positive_int, help="engine replicas ([cluster] replicas)")
    bc.add_argument("--sessions-per-replica", type=positive_int, help="([cluster] sessions_per_replica)")
    bc.add_argument("--cpus-per-replica", type=positive_float, help="([cluster] cpus_per_replica)")
    bc.add_argument("--changes", type=positive_int, default=20, help="gain changes timed through each (20)")
    bc.add_argument("--most-clients", type=positive_int, default=16, help="stop adding clients here (16)")
    bc.add_argument("--stage", type=positive_float, default=10.0, help="seconds each client count is measured")
    bc.add_argument("--kills", type=nonneg_int, default=2, help="replicas killed, one at a time (2)")


def cmd_bench(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.generation import as_dict, format_result, run_bench

    check_precision(args)
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
        **kernels(args),
    )
    for r in result:
        print(format_result(r))
        if args.json:
            print(json.dumps(as_dict(r)))
    return 0


def cmd_bench_patterns(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.patterns import format_pattern_bench, run_pattern_bench

    model = load_model(args)
    n_q = model.spec.lm.num_codebooks
    patterns = [parse_pattern(p, n_q) for p in args.patterns]
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    timings = run_pattern_bench(model, patterns, args.frames, args.rounds, cfg=3.0, say=say)
    print(
        f"codebook patterns on {args.model} ({model.lm.precision}, kv {model.lm.kv}), {args.frames} frames, "
        f"cfg 3, greedy, median of {args.rounds} interleaved rounds:"
    )
    print(format_pattern_bench(timings, model.spec.frame_rate))
    return 0


def cmd_bench_window(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.quality import compare_windows, format_window_quality

    model = load_model(args)
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
    from musicgen_live.bridges.bench.matrices import format_matrix_bench, run_matrix_bench
    from musicgen_live.engine.linear import PRECISIONS

    bad = [f for f in args.formats if f not in PRECISIONS]
    if bad:
        print(f"error: unknown format {', '.join(bad)} (choose from {', '.join(PRECISIONS)})", file=sys.stderr)
        return 2
    if args.threads:
        from musicgen_live.bridges.bench.matrices import format_thread_line, run_thread_bench

        for n, b in run_thread_bench(args.model, tuple(args.formats), args.rows[0], tuple(args.threads)):
            print(format_thread_line(n, b), flush=True)
        return 0
    bench = run_matrix_bench(args.model, tuple(args.formats), tuple(args.rows), say=print)
    print(format_matrix_bench(bench))
    return 0


def cmd_bench_step(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.step import format_step_bench, run_step_bench
    from musicgen_live.engine.errors import UserError

    try:
        say = lambda line: print(line, flush=True)  # noqa: E731
        splits = run_step_bench(
            args.model, args.precisions, args.kv, args.codec, args.rounds, args.steps, warmup=args.warmup, say=say
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_step_bench(args.model, args.kv, args.codec, splits))
    return 0


def cmd_bench_codec(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.codec import (
        codec_fidelity,
        format_codec_bench,
        format_encoder_bench,
        format_fidelity,
        run_codec_bench,
        run_encoder_bench,
    )

    model = load_model(args)
    if args.encode_pieces:
        costs = run_encoder_bench(model.codec, args.encode_seconds, args.encode_pieces)
        print(format_encoder_bench(args.encode_seconds, costs))
        return 0
    print(format_codec_bench(run_codec_bench(model.codec, args.seconds, args.chunk_frames)))
    if model.codec.precision != "float32":
        print(format_fidelity(codec_fidelity(model.codec.with_precision("float32"), model.codec)))
    return 0


def cmd_bench_stream(args: argparse.Namespace) -> int:

    from musicgen_live.bridges.bench.stream import format_stream_bench, run_stream_bench
    from musicgen_live.streamer.outputs import make_output_or_null

    stream = args.sections["stream"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = load_model(args, streaming=True)
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


def cmd_bench_quantize(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.quantize import format_quantize_bench, run_quantize_bench

    model = load_model(args, streaming=True)
    print(format_quantize_bench(run_quantize_bench(model, args.bars, args.tempo, args.quantum)))
    return 0


def cmd_bench_midi(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.midi import format_midi_bench, run_midi_bench

    model = load_model(args, streaming=True)
    print(format_midi_bench(run_midi_bench(model, args.changes)))
    return 0


def cmd_bench_bridges(args: argparse.Namespace) -> int:

    from musicgen_live.bridges.bench.bridge_latency import format_bridge_bench, run_bridge_bench

    stream = args.sections["stream"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = load_model(args)
    result = run_bridge_bench(model, args.output, stream, args.commands, args.clients, args.seconds, say)
    print(format_bridge_bench(result))
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.soak import format_soak, run_soak

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    extra = [a for a in args.serve_args if a != "--"]
    result = run_soak(
        args.model, args.minutes, args.scenario, args.warmup, extra, args.browser, say, args.seed, args.serve_from
    )
    print(format_soak(result, args.bound))
    return 1 if result.problems(args.bound) else 0


def cmd_bench_page(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.page import format_page_bench, run_page_bench

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    print(format_page_bench(run_page_bench(args.model, args.seconds, say, args.serve_from)))
    return 0


def cmd_bench_hostile(args: argparse.Namespace) -> int:

    from musicgen_live.bridges.bench.hostile import format_hostile_bench, run_hostile_bench

    stream = args.sections["stream"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = load_model(args, streaming=True)
    print(format_hostile_bench(run_hostile_bench(model, stream, args.seconds, args.soak_minutes, say)))
    return 0


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    from musicgen_live.bridges.bench.cluster import format_cluster_bench, run_cluster_bench

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    spec = cluster_spec(args)
    print(format_cluster_bench(run_cluster_bench(spec, args.changes, args.most_clients, args.stage, args.kills, say)))
    return 0


COMMANDS = {
    "bench": cmd_bench,
    "bench-window": cmd_bench_window,
    "bench-patterns": cmd_bench_patterns,
    "bench-matrices": cmd_bench_matrices,
    "bench-step": cmd_bench_step,
    "bench-codec": cmd_bench_codec,
    "bench-stream": cmd_bench_stream,
    "bench-quantize": cmd_bench_quantize,
    "bench-midi": cmd_bench_midi,
    "bench-bridges": cmd_bench_bridges,
    "soak": cmd_soak,
    "bench-page": cmd_bench_page,
    "bench-hostile": cmd_bench_hostile,
    "bench-cluster": cmd_bench_cluster,
}
