"""The [osc], [websocket] and [bridges] sections of config.toml."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OscConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 57130
    prefix: str = "/musicgen"
    reply_port: int = 0  # 0 = answer to the port a message came from (Max, TouchOSC, Sonic Pi: set it)
    position_hz: float = 10.0  # /position notifications per second to subscribers
    status_s: float = 1.0  # /status period
    horizon_s: float = 10.0  # a bundle timetag further ahead than this is clamped to it
    tcp: bool = False  # also serve OSC over TCP (SLIP framing) on the same port number
    allow: list[str] = field(default_factory=list)  # peers beyond loopback allowed to send (addresses / networks)
    subscription_s: float = 600.0  # a subscription lapses unless renewed (/subscribe again, or any message)
    max_rate: float = 500.0  # messages a second from one host; more are dropped unparsed


@dataclass(frozen=True)
class WebSocketConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765  # also serves the browser client over HTTP at http://host:port/
    token: str = ""  # required (as ?token=...) when bound beyond loopback
    origins: list[str] = field(default_factory=list)  # extra allowed Origins besides this server's own
    max_message_bytes: int = 1 << 20
    client_queue: int = 64  # audio chunks queued per client before the oldest are dropped
    max_upload_s: float = 30.0  # one client's upload for a continuation, seconds
    max_uploads_mb: float = 64.0  # uploads held for all clients together
    max_clients: int = 32  # WebSocket connections at once
    max_rate: float = 200.0  # text messages a second from one client; more are dropped


@dataclass(frozen=True)
class BridgesConfig:
    audio_dirs: list[str] = field(default_factory=list)  # the only folders continue/file may read
