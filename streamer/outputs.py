"""Where the ring's audio goes: a sound device, nowhere (clock-paced), or a file (clock-paced).

All three share one consumer (`RingOutput.consume`): it runs in the audio callback for a device,
so it only copies from the ring into the block it is handed - no allocation, no lock, no logging.
It counts underruns (the ring ran dry while playing) and leaves a timestamped read position for the
session to turn into latencies.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .devices import AudioDeviceError, device_rate, resolve_device, sounddevice
from .ring import AudioRing


class RingOutput:
    """The consumer half shared by every output. `rate` and `channels` describe the device side."""

    kind = "base"
    scheduled = False  # plays its blocks on a schedule of its own (`sample_clock` set from it)

    def __init__(self, rate: int, channels: int, buffer_frames: int, blocksize: int = 256) -> None:
        self.rate = rate
        self.channels = channels
        self.blocksize = blocksize
        self.ring = AudioRing(max(buffer_frames * 4, blocksize * 8), channels)
        self.paused = True  # silence without consuming (pause / stop / not started)
        self.primed = False  # audio has arrived since play; only then does a dry ring count
        # what must be buffered before a fresh start plays: a quarter of the buffer (50 ms of the
        # default 200), at least two blocks; starting on the codec's first short release alone
        # runs dry at once whenever the first steps are slow (prefills, other sessions)
        self.prime_frames = max(2 * blocksize, buffer_frames // 4)
        self.underruns = 0
        self.device_underflows = 0  # the device's own underflow flags
        self.clock = (0.0, 0)  # (perf_counter, ring.read) at the last block
        # (perf_counter, ring position) of a sample and when it plays: the output's sample clock,
        # for landing changes on a beat; outputs that schedule their blocks know it better than `clock`
        self.sample_clock = (0.0, 0)
        self.error: str | None = None

    def consume(self, out: np.ndarray) -> None:
        if self.paused or (not self.primed and self.ring.fill < self.prime_frames):
            out.fill(0.0)  # a fresh start waits for prime_frames
        else:
            got = self.ring.read_into(out)
            if got:
                self.primed = True
            if got < len(out) and self.primed:
                self.underruns += 1
        self.clock = (time.perf_counter(), self.ring.read)
        if not self.scheduled:  # a device's callback: the best reading there is
            self.sample_clock = self.clock

    def heard_at(self, position: int) -> float:
        """When ring sample `position` plays (perf_counter seconds): on the output's own schedule
        where it keeps one - a host that wakes the output thread late (tens of ms on a loaded
        2-core host) then delays only when we notice, not the answer - else when the device last
        took a block."""
        if self.scheduled:
            t, at = self.sample_clock
            return t + (position - at) / self.rate
        return self.clock[0]

    def set_playing(self, playing: bool) -> None:
        if playing and self.paused:
            self.primed = False
        self.paused = not playing

    # overridden by concrete outputs
    def open(self) -> None: ...

    def close(self) -> None: ...

    @property
    def healthy(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        return f"{self.kind} {self.rate} Hz x{self.channels}"


class PacedOutput(RingOutput):
    """Consumes a block every block period from a thread, like a sound card with no sound card."""

    kind = "null"
    scheduled = True

    def __init__(self, rate: int, channels: int, buffer_frames: int, blocksize: int = 256) -> None:
        super().__init__(rate, channels, buffer_frames, blocksize)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._block = np.zeros((blocksize, channels), dtype=np.float32)
        self.started_at: float | None = None

    def open(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-output", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        period = self.blocksize / self.rate
        next_t = time.perf_counter()
        self.started_at = next_t  # the first block: output sample n plays at about started_at + n / rate
        while not self._stop.is_set():
            # this block's first sample plays at the block's scheduled time
            self.sample_clock = (next_t, max(self.ring.read, self.ring.flush_to))
            self.consume(self._block)
            try:
                self.deliver(self._block)
            except Exception as e:  # whatever happens to the recording, the clock (and the music) goes on
                self.error = self.error or f"{self.describe()} failed ({type(e).__name__}: {e})"
            next_t += period
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # fell far behind (machine stalled): resynchronise the clock
                next_t = time.perf_counter()

    def deliver(self, block: np.ndarray) -> None:
        """What happens to each played block (nothing for null)."""

    @property
    def healthy(self) -> bool:
        return True  # a clock with nowhere to fail: it always plays (a file that fails says so in `error`)


class FileOutput(PacedOutput):
    """Writes what would be heard, in real time, to an audio file (for recordings and tests)."""

    kind = "file"

    def __init__(self, path: str, rate: int, channels: int, buffer_frames: int, blocksize: int = 256) -> None:
        super().__init__(rate, channels, buffer_frames, blocksize)
        self.path = path
        self._file: Any = None

    def open(self) -> None:
        import soundfile as sf

        parent = Path(self.path).resolve().parent
        if not parent.is_dir():
            raise AudioDeviceError(f"cannot write '{self.path}': folder '{parent}' does not exist")
        try:
            self._file = sf.SoundFile(self.path, "w", samplerate=self.rate, channels=self.channels, subtype="FLOAT")
        except Exception as e:
            raise AudioDeviceError(f"cannot write '{self.path}' ({e})") from None
        super().open()

    def deliver(self, block: np.ndarray) -> None:
        if self.paused or self._file is None:
            return
        try:
            self._file.write(block)
        except Exception as e:  # a full disk, a vanished drive: stop recording, keep playing, say so
            self.error = f"cannot write '{self.path}' any more ({e}): the music goes on, no longer recorded"
            file, self._file = self._file, None
            try:
                file.close()
            except Exception:
                pass

    def close(self) -> None:
        super().close()
        if self._file is not None:
            self._file.close()
            self._file = None

    def describe(self) -> str:
        return f"file {self.path} ({self.rate} Hz x{self.channels})"


class DeviceOutput(RingOutput):
    """A PortAudio output stream whose callback only reads the ring."""

    kind = "device"

    def __init__(
        self,
        device: str | int | None,
        channels: int,
        buffer_frames_at: float,
        blocksize: int = 256,
        rate: int | None = None,
    ) -> None:
        self.device_spec = device
        self.index = resolve_device(device, "output")
        rate = rate or device_rate(self.index)
        info = sounddevice().query_devices(self.index)
        channels = min(channels, info["max_output_channels"]) or channels
        super().__init__(rate, channels, int(buffer_frames_at * rate), blocksize)
        self.name = info["name"]
        self._stream: Any = None

    def open(self) -> None:
        sd = sounddevice()
        try:
            self._stream = sd.OutputStream(
                device=self.index,
                samplerate=self.rate,
                channels=self.channels,
                dtype="float32",
                blocksize=self.blocksize,
                callback=self._callback,
                finished_callback=self._finished,
            )
            self._stream.start()
        except Exception as e:  # sd.PortAudioError: busy device, refused rate or channel count
            self._stream = None
            raise AudioDeviceError(
                f"output device '{self.name}' refused {self.rate} Hz x{self.channels} ({e})"
            ) from None
        self.error = None

    def _callback(self, outdata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
        if status.output_underflow:
            self.device_underflows += 1
        self.consume(outdata)

    def _finished(self) -> None:
        if self._stream is not None and not getattr(self, "_closing", False):
            self.error = f"output device '{self.name}' stopped (unplugged or taken by another program?)"

    def close(self) -> None:
        self._closing = True
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:
                pass
            self._stream = None

    def reopen(self) -> bool:
        """After the device vanished: try to open it again (the session calls this now and then)."""
        self.close()
        self._closing = False
        try:
            self.index = resolve_device(self.device_spec, "output")
            self.open()
            return True
        except AudioDeviceError as e:
            self.error = str(e)
            return False

    @property
    def healthy(self) -> bool:
        return self.error is None and self._stream is not None and self._stream.active

    def describe(self) -> str:
        return f"device '{self.name}' ({self.rate} Hz x{self.channels})"


def make_output(spec: str, channels: int, buffer_s: float, blocksize: int = 256, rate: int = 48000) -> RingOutput:
    """`null`, `file:PATH`, `default`, or a device name / index."""
    frames = int(buffer_s * rate)
    if spec == "null":
        return PacedOutput(rate, channels, frames, blocksize)
    if spec.startswith("file:"):
        return FileOutput(spec[5:], rate, channels, frames, blocksize)
    return DeviceOutput(None if spec == "default" else spec, channels, buffer_s, blocksize)


def make_output_or_null(spec: str, channels: int, buffer_s: float, blocksize: int, say) -> RingOutput:  # noqa: ANN001
    """`make_output`, except that a missing *default* device falls back to the null output with a
    warning: the main job must run on machines without sound (servers, CI)."""
    try:
        return make_output(spec, channels, buffer_s, blocksize)
    except AudioDeviceError as e:
        if spec != "default":
            raise
        say(f"warning: {e}; playing to the null output instead")
        return make_output("null", channels, buffer_s, blocksize)


class InputCapture:
    """A PortAudio input stream writing into a ring of the last `seconds`, for "continue from input".

    The callback only copies into the preallocated ring; `last()` copies out from the session thread.
    """

    def __init__(self, device: str | int | None, seconds: float = 30.0, channels: int = 1) -> None:
        from .ring import HistoryRing

        self.index = resolve_device(device, "input")
        info = sounddevice().query_devices(self.index)
        self.name = info["name"]
        self.rate = device_rate(self.index)
        self.channels = max(1, min(channels, info["max_input_channels"]))
        self.history = HistoryRing(seconds, self.rate, self.channels)
        self._stream: Any = None
        self.overflows = 0

    def open(self) -> None:
        sd = sounddevice()
        try:
            self._stream = sd.InputStream(
                device=self.index,
                samplerate=self.rate,
                channels=self.channels,
                dtype="float32",
                callback=self._callback,
            )
            self._stream.start()
        except Exception as e:
            raise AudioDeviceError(f"input device '{self.name}' could not be opened ({e})") from None

    def _callback(self, indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self.history.append(indata)

    def last(self, seconds: float) -> tuple[np.ndarray, int]:
        return self.history.last(seconds), self.rate

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
