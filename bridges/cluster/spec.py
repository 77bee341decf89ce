"""What every part of the cluster shares: the spec sent to each replica, the application's
names, and Ray (None where it is not installed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from musicgen_live.engine.errors import SetupError

from ..config import BridgesConfig, ClusterConfig, WebSocketConfig

if TYPE_CHECKING:
    from musicgen_live.engine.config import SamplingConfig
    from musicgen_live.engine.model import Kernels
    from musicgen_live.streamer.config import StreamConfig

try:
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    LOST: tuple[type[BaseException], ...] = (RayActorError, ActorDiedError, ActorUnavailableError)  # replica gone
except ImportError:  # the module still imports (docs, type checks); `require_ray` says what to install
    ray = None  # type: ignore[assignment]
    LOST = ()

APP = "musicgen-live"  # the Serve application's name
NAMESPACE = "musicgen_live"
STORE = "musicgen-live-sessions"
log = logging.getLogger("ray.serve")


def require_ray() -> None:
    if ray is None:
        raise SetupError("the cluster needs Ray Serve: pip install 'musicgen-live[cluster]' (or 'ray[serve]')")


@dataclass(frozen=True)
class ClusterSpec:
    """Everything a replica needs to build its engine and sessions (sent to every replica)."""

    model: str
    device: str
    kernels: Kernels
    stream: StreamConfig
    sampling: SamplingConfig
    websocket: WebSocketConfig
    bridges: BridgesConfig
    cluster: ClusterConfig
