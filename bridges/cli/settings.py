"""How a command's options meet the settings (config.toml), and the model they name."""

from __future__ import annotations

import argparse
import os
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
    "pattern": ("model", "pattern"),
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


def schema() -> dict[str, type]:
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


def apply_config(args: argparse.Namespace) -> None:
    """Options left out take their setting (`OPTIONS`); options given override the settings, checked
    like the file. `args.sections` holds the settings that apply."""
    from musicgen_live.engine.config import load_sections, override

    sections = load_sections(args.config, schema())
    changes: dict[str, dict[str, object]] = {name: {} for name in sections}
    for dest, (name, key) in OPTIONS.items():
        if not hasattr(args, dest):
            continue
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(sections[name], key))
        else:
            changes[name][key] = getattr(args, dest)
    args.sections = {name: override(section, name, changes[name]) for name, section in sections.items()}


def load_model(args: argparse.Namespace, streaming: bool = False):  # -> MusicGen
    """The model `args` name. `streaming`: for a process whose generation thread must own torch's
    CPU pool (`streamer.threads`): this (main) thread is confined to one core and the model is
    loaded on a short-lived thread."""
    import torch
    from musicgen_live.engine.errors import CheckpointError
    from musicgen_live.engine.model import MusicGen

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device '{args.device}' was asked for but no CUDA GPU is available")
    check_precision(args)
    if args.exact and args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def load() -> MusicGen:
        model = MusicGen.load(args.model, device=args.device, **kernels(args))
        pattern = getattr(args, "pattern", "")  # commands without model options play the model's own
        if pattern:
            model.play_pattern(parse_pattern(pattern, model.spec.lm.num_codebooks))
        return model

    if not streaming:
        return load()
    from musicgen_live.streamer import threads

    threads.confine()
    return threads.on_pool_thread(load)


def parse_pattern(text: str, n_q: int):  # -> PatternSpec
    """--pattern / [model] pattern, refused in one sentence (before a model is loaded where it can)."""
    from musicgen_live.engine.codebook_patterns import PatternError, PatternSpec
    from musicgen_live.engine.errors import CheckpointError

    try:
        return PatternSpec.parse(text, n_q)
    except PatternError as e:
        raise CheckpointError(f"--pattern: {e}") from None


def kernels(args: argparse.Namespace) -> Kernels:
    return {
        "exact": args.exact,
        "precision": args.precision,
        "guidance": args.guidance,
        "kv": args.kv,
        "codec": args.codec,
    }


def check_precision(args: argparse.Namespace) -> None:
    """Refuse an impossible precision (weights, KV cache, codec) before minutes of loading, in one sentence."""
    import torch
    from musicgen_live.engine.codec import check_codec_precision
    from musicgen_live.engine.kvcache import check_kv
    from musicgen_live.engine.linear import check_precision

    device = torch.device(args.device)
    check_precision(args.precision, device, args.exact)
    check_kv(args.kv, device, args.exact)
    check_codec_precision(args.codec, device, args.exact)


def check_output(path: str, suffixes: tuple[str, ...]) -> None:
    from musicgen_live.engine.errors import AudioInputError

    if not path.lower().endswith(suffixes):
        raise AudioInputError(f"'{path}': the output must end in {' or '.join(suffixes)}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise AudioInputError(f"cannot write '{path}': folder '{parent}' does not exist")
