"""`musicgen-live`: the command line, the outermost bridge (shell -> engine / streamer).

Every expected failure (bad path, bad value, damaged file) ends with one sentence on stderr and
exit status 2, never a traceback. Tracebacks mean bugs.

The commands live in three rooms: `offline` (render, decode), `serving` (serve, cluster, send,
config, devices) and `benches` (every measurement); `arguments` holds the option types and
`settings` how options meet config.toml and which model they load. Nothing here imports torch
until a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import benches, offline, serving
from .settings import EXIT_USAGE, apply_config

COMMANDS = {**offline.COMMANDS, **serving.COMMANDS, **benches.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-live", description="Real-time, endlessly streaming MusicGen.")
    parser.add_argument("--config", help="settings file (default: the repository's config.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (offline, serving, benches):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from musicgen_live.streamer.openmp import bound_primitive_cache, limit_spinning

    limit_spinning()  # before anything loads torch
    bound_primitive_cache()
    args = build_parser().parse_args(argv)
    from musicgen_live.engine.errors import UserError

    try:
        apply_config(args)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"musicgen-live {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `musicgen-live config | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
