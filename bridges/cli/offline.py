"""`render` and `decode`: a finite piece to a file, offline (no session, no bridges)."""

from __future__ import annotations

import argparse
import sys
import time

from .arguments import add_model_options, nonneg_float, positive_float, positive_int
from .settings import check_output, load_model


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("render", help="generate a finite piece offline into an audio file")
    add_model_options(r)
    r.add_argument("--prompt", default="", help="text prompt")
    length = r.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=positive_float, help="length to generate, in seconds")
    length.add_argument("--frames", type=positive_int, help="length to generate, in codec frames")
    r.add_argument("--cfg", type=nonneg_float, help="classifier-free guidance scale ([sampling] cfg, 3)")
    r.add_argument(
        "--cfg-beta",
        type=nonneg_float,
        help="MusicGen-Style: double guidance, text against style ([sampling] cfg_beta, 0 = off)",
    )
    r.add_argument("--greedy", action="store_true", help="argmax decoding (deterministic)")
    r.add_argument("--temperature", type=positive_float, help="([sampling] temperature, 1)")
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
        type=positive_int,
        help="codebooks of the style quantizer to use, 1..6 (the checkpoint's eval_q, 3): more lets more of "
        "the excerpt through (audiocraft's set_style_conditioner_params eval_q)",
    )
    r.add_argument(
        "--style-excerpt",
        type=positive_float,
        help="seconds of --style audio the style is taken from, its middle (the checkpoint's, 3)",
    )
    r.add_argument("--out", required=True, help="output audio: .wav (float), .flac or .npy")
    r.add_argument("--codes-out", help="also save the (codebooks, frames) int64 codes as .npy")
    r.add_argument(
        "--decode-chunk",
        type=positive_int,
        default=25,
        help="frames per codec push (default 25; the audio is the same for any value)",
    )

    d = sub.add_parser("decode", help="decode a codes .npy to audio through the streaming decoder")
    add_model_options(d)
    d.add_argument("--codes", required=True, help=".npy of shape (codebooks, frames), e.g. from render --codes-out")
    d.add_argument("--out", required=True, help="output: .wav, .flac or .npy (float32 samples)")
    d.add_argument("--chunk-frames", type=positive_int, default=1, help="frames per decoder push (default 1)")


def cmd_render(args: argparse.Namespace) -> int:
    from musicgen_live.engine.audiofile import read_audio, write_audio
    from musicgen_live.engine.errors import ContextError
    from musicgen_live.engine.render import render
    from musicgen_live.engine.sampling import SamplingParams

    check_output(args.out, (".wav", ".flac", ".npy"))
    if args.codes_out:
        check_output(args.codes_out, (".npy",))
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
    model = load_model(args)
    frames = args.frames if args.frames else model.spec.seconds_to_frames(args.seconds)
    if frames <= 0:
        raise ContextError(f"{args.seconds} s is shorter than one frame")
    print(f"codebook pattern: {model.codebook_pattern.describe()}", file=sys.stderr)
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


def cmd_decode(args: argparse.Namespace) -> int:
    from musicgen_live.engine.audiofile import write_audio
    from musicgen_live.engine.render import decode_streamed, load_codes

    check_output(args.out, (".wav", ".flac", ".npy"))
    model = load_model(args)
    codes = load_codes(args.codes, model)
    audio = decode_streamed(model, codes, args.chunk_frames)
    write_audio(args.out, audio, model.sample_rate)
    print(f"wrote {args.out}: {audio.shape[-1] / model.sample_rate:.2f} s", file=sys.stderr)
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


COMMANDS = {
    "render": cmd_render,
    "decode": cmd_decode,
}
