"""Reading prompt audio and writing results, with one clear sentence when a file is unusable.

Prompt audio may have any sample rate, channel count and any format libsndfile reads; it comes
back as float32 (channels, samples) at the model's rate (soxr resampling, channel down-mix by
averaging, mono duplicated for stereo models).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AudioInputError

TAIL_MARGIN = 4096  # frames read before the asked-for tail (the resampler's filter needs some)


def read_audio(
    path: str | Path,
    rate: int,
    channels: int,
    last_s: float | None = None,
    inside: Sequence[str | Path] = (),
    first_s: float | None = None,
    max_bytes: int | None = None,
) -> torch.Tensor:
    """The file's audio as (channels, samples) at `rate`: all of it, only its last `last_s` or its
    first `first_s` seconds (a long file is not read whole). See `read_audio_file`."""
    return read_audio_file(path, rate, channels, last_s, inside, first_s, max_bytes)[0]


def read_audio_file(
    path: str | Path,
    rate: int,
    channels: int,
    last_s: float | None = None,
    inside: Sequence[str | Path] = (),
    first_s: float | None = None,
    max_bytes: int | None = None,
) -> tuple[torch.Tensor, int]:
    """(audio as in `read_audio`, the file's own channel count).

    Only a regular file is read: the name is opened without blocking (a named pipe, a device, a
    folder is refused at once - opening a pipe normally waits for a writer, for ever), then the
    opened file itself is checked: its type, its size (`max_bytes`, None: any), and with `inside`,
    the folders it must lie in (its resolved path and identity, so a link swapped in after an
    earlier check of the name cannot point the read elsewhere). The name is taken literally: no
    `~` expansion."""
    import soundfile as sf

    p = Path(path)
    try:  # O_NONBLOCK: a pipe's or a device's open returns at once (regular files ignore it)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise AudioInputError(f"audio file '{path}' does not exist") from None
    except IsADirectoryError:
        raise AudioInputError(f"'{path}' is a folder, not an audio file") from None
    except OSError as e:
        raise AudioInputError(f"audio file '{path}' could not be opened ({e.strerror or e})") from None
    try:  # what was opened, before anything reads it (a folder cannot even be wrapped as a file)
        opened = os.fstat(fd)
        if inside:
            _check_inside(p, opened, inside)
        if not stat.S_ISREG(opened.st_mode):
            raise AudioInputError(
                f"'{path}' is {_kind(opened.st_mode)}, not an audio file: only regular files are read"
            )
        if opened.st_size == 0:
            raise AudioInputError(f"audio file '{path}' is empty (0 bytes)")
        if max_bytes is not None and opened.st_size > max_bytes:
            raise AudioInputError(
                f"audio file '{path}' is {opened.st_size / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB "
                "a file may have here ([stream] max_file_mb)"
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            with sf.SoundFile(f) as snd:
                data, file_rate, file_channels = _read_part(snd, last_s, first_s), snd.samplerate, snd.channels
        except AudioInputError:
            raise
        except Exception as e:  # libsndfile reports every format problem as a RuntimeError subtype
            raise AudioInputError(f"audio file '{path}' could not be read ({e})") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"audio file '{path}' contains no samples")
    return prepare_audio(data, file_rate, rate, channels), int(file_channels)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for a sentence."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_inside(path: Path, opened: os.stat_result, folders: Sequence[str | Path]) -> None:
    real = Path(os.path.realpath(path))
    dirs = [Path(d).resolve() for d in folders]
    try:
        same = os.stat(real)
    except OSError:
        same = None
    if (
        not any(real == d or d in real.parents for d in dirs)
        or same is None
        or (same.st_dev, same.st_ino) != (opened.st_dev, opened.st_ino)
    ):
        raise AudioInputError(f"'{path}' is outside the folders it may be read from")


def _read_part(snd: Any, last_s: float | None, first_s: float | None) -> np.ndarray:  # snd: soundfile.SoundFile
    """All frames, the first `first_s` seconds, or the last `last_s` seconds (plus a little for the
    resampler's filter)."""
    total = snd.frames
    if first_s is not None:
        return snd.read(min(total, int(first_s * snd.samplerate) + TAIL_MARGIN), dtype="float32", always_2d=True)
    want = total if last_s is None else min(total, int(last_s * snd.samplerate) + TAIL_MARGIN)
    if want < total and snd.seekable():
        snd.seek(total - want)
    elif want < total:  # a stream that cannot seek: keep only the tail while reading through
        tail = np.zeros((0, snd.channels), dtype=np.float32)
        for block in snd.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
            tail = np.concatenate([tail, block])[-want:]
        return tail
    return snd.read(want, dtype="float32", always_2d=True)


def prepare_audio(data: np.ndarray, file_rate: int, rate: int, channels: int) -> torch.Tensor:
    """(samples, file_channels) float -> (channels, samples) at `rate`."""
    import soxr

    if not np.all(np.isfinite(data)):
        raise AudioInputError("audio contains NaN or infinite samples")
    mono = data.mean(axis=1, keepdims=True) if data.shape[1] != channels else data
    if mono.shape[1] != channels:
        mono = np.repeat(mono, channels, axis=1)
    if file_rate != rate:
        mono = soxr.resample(mono, file_rate, rate, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(mono.T, dtype=np.float32))


def write_audio(path: str | Path, audio: torch.Tensor, rate: int) -> None:
    """(channels, samples) -> .wav (32-bit float), .flac (24-bit) or .npy (float32 array)."""
    import soundfile as sf

    p = Path(path)
    data = audio.detach().cpu().numpy().astype(np.float32)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            np.save(p, data)
        elif suffix == ".wav":
            sf.write(str(p), data.T, rate, subtype="FLOAT")
        elif suffix == ".flac":
            sf.write(str(p), np.clip(data.T, -1.0, 1.0), rate, subtype="PCM_24")
        else:
            raise AudioInputError(f"cannot write '{path}': use a .wav, .flac or .npy file name")
    except OSError as e:
        raise AudioInputError(f"cannot write '{path}' ({e.strerror or e})") from None
