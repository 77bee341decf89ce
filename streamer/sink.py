"""Where generated audio goes on its way to the output's ring.

Path: model-rate audio -> own-output history (for "continue") -> taps (WebSocket clients) ->
streaming resampler (soxr) -> channel mapping, gain -> ring. Runs on the generation thread; the
audio callback only ever reads the ring.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .outputs import RingOutput
from .ring import HistoryRing

# called with (first sample index, (n, channels) float32 at the model rate) for every chunk of
# audio produced; taps must copy what they keep, and be quick
Tap = Callable[[int, np.ndarray], None]


class AudioSink:
    def __init__(self, rate: int, channels: int, output: RingOutput, history_s: float) -> None:
        self.rate = rate
        self.output = output
        self.history = HistoryRing(history_s, rate, channels)
        self.taps: list[Tap] = []
        self.gain = 1.0
        self.samples = 0  # model-rate samples emitted since the session began
        self.tap_errors = 0
        self._resampler = _Resampler(rate, output.rate, channels)

    def push(self, audio: torch.Tensor) -> None:
        """Audio (channels, n) at the model rate, the next n samples of the stream."""
        if audio.shape[-1] == 0:
            return
        frames = audio.detach().cpu().numpy().T.astype(np.float32, copy=False)  # (n, channels)
        self.history.append(frames)
        for tap in list(self.taps):
            try:
                tap(self.samples, frames)
            except Exception:  # a broken listener must not stop the music; it is counted
                self.tap_errors += 1
        self.samples += len(frames)
        out = self._resampler.push(frames)
        if len(out):
            out = _map_channels(out, self.output.channels)
            if self.gain != 1.0:
                out = out * self.gain
            self.output.ring.write(out)

    def device_position(self, model_sample: int) -> int:
        """The output ring position (device frames, 1-based end) of model sample `model_sample`."""
        return int(model_sample * self.output.rate / self.rate) + 1


class _Resampler:
    """Streaming model-rate -> device-rate conversion (soxr keeps the filter state between chunks)."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self.same = rate_in == rate_out
        if not self.same:
            import soxr

            self.stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")

    def push(self, frames: np.ndarray) -> np.ndarray:
        if self.same:
            return frames
        return self.stream.resample_chunk(np.ascontiguousarray(frames))


def _map_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    if frames.shape[1] == channels:
        return frames
    if frames.shape[1] == 1:
        return np.repeat(frames, channels, axis=1)
    if channels == 1:
        return frames.mean(axis=1, keepdims=True)
    return frames[:, :channels]
