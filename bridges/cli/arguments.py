"""Argument types for the command line: each refuses a bad value with one sentence (argparse
prints it with the usage, exit status 2)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def window_spec(text: str) -> tuple[float, float]:
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


def add_model_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--pattern",
        help="built-in models: play another codebook pattern, NAME[:KEY=VALUES]... - delay, parallel, "
        "unroll, unroll:flattening=0,1,1,1, delay:flatten_first=2, coarse_first, musiclm:group_by=2 "
        "([model] pattern; a checkpoint plays its own)",
    )
