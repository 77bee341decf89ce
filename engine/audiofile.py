"""Reading prompt audio and writing results, with one clear sentence when a file is unusable.

Prompt audio may have any sample rate, channel count and any format libsndfile reads; it comes
back as float32 (channels, samples) at the model's rate (soxr resampling, channel down-mix by
averaging, mono duplicated for stereo models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import AudioInputError


def read_audio(path: str | Path, rate: int, channels: int) -> torch.Tensor:
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioInputError(f"audio file '{path}' does not exist")
    try:
        data, file_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports every format problem as a RuntimeError subtype
        raise AudioInputError(f"audio file '{path}' could not be read ({e})") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"audio file '{path}' contains no samples")
    return prepare_audio(data, file_rate, rate, channels)


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
