"""PortAudio access through sounddevice, imported lazily so a machine without PortAudio can still
render, test and serve to `null` / files. Every failure becomes one sentence saying what to do."""

from __future__ import annotations

from typing import Any

from musicgen_live.engine.errors import UserError


class AudioDeviceError(UserError):
    """An audio device is missing, busy, or refused the settings asked of it."""


def sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError:
        raise AudioDeviceError(
            "the PortAudio library is not installed: on Debian/Ubuntu run 'apt-get install libportaudio2' "
            "(or use --output null / file:PATH)"
        ) from None
    return sd


def list_devices() -> list[dict[str, Any]]:
    sd = sounddevice()
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        out.append(
            {
                "index": i,
                "name": d["name"],
                "hostapi": apis[d["hostapi"]]["name"],
                "inputs": d["max_input_channels"],
                "outputs": d["max_output_channels"],
                "default_rate": d["default_samplerate"],
            }
        )
    return out


def resolve_device(spec: str | int | None, kind: str) -> int | None:
    """A device given by index or by (part of) its name -> its index; None = the default device."""
    sd = sounddevice()
    if spec in (None, "", "default"):
        try:
            index = sd.default.device[0 if kind == "input" else 1]
        except Exception:
            index = -1
        if index is None or index < 0:
            raise AudioDeviceError(f"there is no default {kind} device (see 'musicgen-live devices')")
        return int(index)
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = sd.query_devices()
    if isinstance(spec, int) or str(spec).isdigit():
        i = int(spec)
        if not 0 <= i < len(devices) or devices[i][key] <= 0:
            raise AudioDeviceError(f"there is no {kind} device number {i} (see 'musicgen-live devices')")
        return i
    matches = [i for i, d in enumerate(devices) if str(spec).lower() in d["name"].lower() and d[key] > 0]
    if not matches:
        raise AudioDeviceError(f"no {kind} device matches '{spec}' (see 'musicgen-live devices')")
    return matches[0]


def device_rate(index: int | None) -> int:
    """The default sample rate of device `index` (None: the default device)."""
    return int(sounddevice().query_devices(index)["default_samplerate"])
