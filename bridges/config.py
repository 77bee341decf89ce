"""The [osc], [websocket] and [bridges] sections of config.toml."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta
from musicgen_live.engine.config import Port, Seconds, Text

Rate = Annotated[float, Meta(gt=0)]


@dataclass(frozen=True)
class OscConfig:
    enabled: bool = True
    host: Text = "127.0.0.1"
    port: Port = 57130
    prefix: Annotated[str, Meta(pattern="^/?[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*$")] = "/musicgen"
    reply_port: Port = 0  # 0 = answer to the port a message came from (Max, TouchOSC, Sonic Pi: set it)
    position_hz: Annotated[float, Meta(gt=0, le=100)] = 10.0  # /position notifications per second to subscribers
    status_s: Seconds = 1.0  # /status period
    horizon_s: Annotated[float, Meta(ge=0, le=3600)] = 10.0  # a bundle timetag further ahead is clamped to it
    tcp: bool = False  # also serve OSC over TCP (SLIP framing) on the same port number
    allow: list[str] = field(default_factory=list)  # peers beyond loopback allowed to send (addresses / networks)
    subscription_s: Seconds = 600.0  # a subscription lapses unless renewed (/subscribe again, or any message)
    max_rate: Rate = 500.0  # messages a second from one host; more are dropped unparsed
    max_intake: Rate = 2000.0  # UDP datagrams a second from all hosts together; beyond it reading pauses

    def check(self) -> None:
        for net in self.allow:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"allow: '{net}' is not an address or a network like 192.168.1.0/24") from None


@dataclass(frozen=True)
class WebSocketConfig:
    enabled: bool = True
    host: Text = "127.0.0.1"
    port: Port = 8765  # also serves the browser client over HTTP at http://host:port/
    token: str = ""  # required (as ?token=...) when bound beyond loopback
    origins: list[str] = field(default_factory=list)  # extra allowed Origins besides this server's own
    max_message_bytes: Annotated[int, Meta(ge=1024)] = 1 << 20
    client_queue: Annotated[int, Meta(ge=2, le=10_000)] = (
        64  # audio chunks queued per client before the oldest are dropped
    )
    max_upload_s: Annotated[float, Meta(gt=0, le=600)] = 30.0  # one client's upload for a continuation, seconds
    max_uploads_mb: Annotated[float, Meta(gt=0)] = 64.0  # uploads held for all clients together
    upload_mb_s: Annotated[float, Meta(gt=0)] = 4.0  # one client's binary frames read at most this fast (MB/s)
    max_clients: Annotated[int, Meta(ge=1)] = 32  # WebSocket connections at once
    max_rate: Rate = 200.0  # text messages a second from one client; more are dropped


@dataclass(frozen=True)
class LinkConfig:
    enabled: bool = False  # join the Ableton Link session on the local network (serve --link)
    tempo: Annotated[float, Meta(ge=20, le=999)] = 120.0  # bpm until a peer's session takes over
    quantum: Annotated[float, Meta(ge=0, le=64)] = 4.0  # beats a bar; changes land on the next bar (0 = at once)


@dataclass(frozen=True)
class MidiCC:
    """A knob or fader: CC number `cc` (on `channel` 1..16, 0 = any) onto a control, 0..127 -> lo..hi."""

    cc: Annotated[int, Meta(ge=0, le=127)]
    control: str  # a control's name: cfg, temperature, top_k, top_p, seed, gain, context, fade, quantize
    lo: float | None = None  # None: the control's own range
    hi: float | None = None
    curve: Literal["linear", "exp"] = "linear"  # exp: equal turns multiply (temperature, cfg)
    channel: Annotated[int, Meta(ge=0, le=16)] = 0


@dataclass(frozen=True)
class MidiScene:
    """A prompt a pad (note) or a program change calls up."""

    prompt: str
    note: Annotated[int, Meta(ge=-1, le=127)] = -1
    program: Annotated[int, Meta(ge=-1, le=127)] = -1
    fade: Annotated[float, Meta(ge=0, le=60)] | None = None  # None: the session's default crossfade
    channel: Annotated[int, Meta(ge=0, le=16)] = 0


@dataclass(frozen=True)
class MidiConfig:
    port: str = ""  # the input port (its name or a part of it); "" = no MIDI (serve --midi PORT)
    api: Literal["alsa", "jack"] = "alsa"
    virtual: bool = False  # create an input port named `port` (or musicgen-live) for others to connect to
    cc: list[MidiCC] = field(default_factory=list)
    scenes: list[MidiScene] = field(default_factory=list)


@dataclass(frozen=True)
class BridgesConfig:
    audio_dirs: list[str] = field(default_factory=list)  # the only folders continue/file may read

    def check(self) -> None:
        for d in self.audio_dirs:
            if not Path(d).expanduser().is_dir():
                raise ValueError(f"audio_dirs: '{d}' is not a folder")


@dataclass(frozen=True)
class ClusterConfig:
    """`musicgen-live cluster`: sessions on engine replicas of a Ray Serve application."""

    address: str = ""  # a running Ray cluster ("auto", "ray://host:10001"); "" = start Ray on this machine
    replicas: Annotated[int, Meta(ge=1, le=1000)] = 1  # engine replicas at start (the least, with autoscaling)
    max_replicas: Annotated[int, Meta(ge=0, le=1000)] = 0  # > replicas: Serve adds replicas as sessions fill them
    sessions_per_replica: Annotated[int, Meta(ge=1, le=64)] = 4  # streams one engine steps in one batch
    cpus_per_replica: Annotated[float, Meta(gt=0, le=1024)] = 1.0  # Ray CPUs (and torch threads) of a replica
    gpus_per_replica: Annotated[float, Meta(ge=0, le=64)] = 0.0  # Ray GPUs of a replica (with --device cuda)
    host: Text = "127.0.0.1"  # Serve's HTTP proxy: the WebSocket and the browser page
    port: Port = 8000
    save_every_s: Annotated[float, Meta(gt=0, le=60)] = 1.0  # recent codes kept this often (the restart point)
    resume_s: Annotated[float, Meta(gt=0, le=86_400)] = 60.0  # a left session can be resumed this long
    gather_ms: Annotated[float, Meta(ge=0, le=200)] = 40.0  # audio gathered into one message per hop (see README)
    open_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0  # a session with no free slot by then is turned away

    def check(self) -> None:
        if self.max_replicas and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")


def is_loopback(host: str) -> bool:
    """Whether a bridge bound to `host` is reachable from this machine only (no token or allow list
    needed): "localhost" or a loopback address; "" (every interface) and names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
