"""Where Ray keeps each session's state, so a session outlives the replica that played it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from .spec import NAMESPACE, STORE, ray


class SessionStore:
    """Each session's latest state: {"view": Session.view(), "client": {audio, codec}, "codes":
    (K, frames) int16, "saved": wall-clock seconds}. Updates merge. A live session is saved every
    `save_every_s`; one not saved for `keep_s` (its client left, or its ingress died and the client
    did not come back to resume it) is forgotten."""

    def __init__(self, keep_s: float = 60.0) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.keep_s = keep_s
        self._pruned = 0.0

    def update(self, sid: str, patch: dict[str, Any]) -> None:
        self.sessions.setdefault(sid, {}).update(patch, saved=time.time())
        self._prune()

    def get(self, sid: str) -> dict[str, Any] | None:
        self._prune()
        return self.sessions.get(sid)

    def count(self, within_s: float = 5.0) -> int:
        """Sessions saved within the last `within_s` seconds (the live ones)."""
        now = time.time()
        return sum(1 for state in self.sessions.values() if now - state["saved"] < within_s)

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned < 1.0:
            return
        self._pruned = now
        for sid in [sid for sid, state in self.sessions.items() if now - state["saved"] > self.keep_s]:
            del self.sessions[sid]


def store(keep_s: float = 60.0) -> Any:
    """The session store's actor handle (made on first use, keeping sessions `keep_s` after their
    last save; it outlives any one replica)."""
    return (
        ray.remote(SessionStore)
        .options(name=STORE, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1)
        .remote(keep_s)
    )
