"""Placing sessions: a new one on the replica with the most free slots that keeps up, every
later request of it on the same replica."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

try:
    from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica
except ImportError:  # the module still imports (docs, type checks); `require_ray` says what to install
    RequestRouter = object  # type: ignore[assignment,misc]

PLACEMENT_S = 5.0  # a session placed this recently counts on its replica until the replica's stats list it


@dataclass
class Placement:
    replica: ReplicaID
    at: float  # time.monotonic() when placed


class SessionRouter(RequestRouter):
    """A new session goes to the replica with the most free slots among those that keep up with
    real time; none free: it waits (Serve asks again, and autoscaling may add a replica). A session
    being restored (`resume`) prefers those too, but takes a free slot on a replica that is behind
    rather than stay silent. Every later request of a session (its multiplexed id) goes where it
    was placed, unless that replica is gone - then it is placed anew."""

    def initialize_state(self, capacity: int = 4, **_kwargs: Any) -> None:
        self.capacity = capacity
        self.placed: dict[str, Placement] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # no other pass to try: Serve waits, then asks again
        sid = pending_request.metadata.multiplexed_model_id
        if not sid:
            return [candidate_replicas]
        by_id = {r.replica_id: r for r in candidate_replicas}
        placed = self.placed.get(sid)
        if placed is not None and placed.replica in by_id:
            return [[by_id[placed.replica]]]
        now = time.monotonic()
        restoring = pending_request.metadata.call_method == "resume"
        options = []  # (behind, -free slots, order): the first is best
        for i, r in enumerate(candidate_replicas):
            free, behind = self._free(r, now), bool((r.routing_stats or {}).get("behind"))
            if free > 0 and (restoring or not behind):  # a new session waits for a replica that keeps up
                options.append((behind, -free, i))
        if not options:
            return []
        best = candidate_replicas[min(options)[2]]
        self.placed[sid] = Placement(best.replica_id, now)
        return [[best]]

    def _free(self, replica: RunningReplica, now: float) -> int:
        """Slots left: capacity less the sessions it reports and those placed there since."""
        stats = replica.routing_stats or {}
        hosted = set(stats.get("sessions", ()))
        mine = [(s, p) for s, p in self.placed.items() if p.replica == replica.replica_id]
        recent = {s for s, p in mine if now - p.at < PLACEMENT_S}
        if "sessions" in stats:
            for s, p in mine:
                if now - p.at >= PLACEMENT_S and s not in hosted:
                    del self.placed[s]  # ended: its replica no longer reports it
        return int(stats.get("capacity", self.capacity)) - len(hosted | recent)
