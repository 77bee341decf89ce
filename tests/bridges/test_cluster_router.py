"""Where `musicgen-live cluster` puts sessions, on replicas as the router sees them (no Ray cluster
started). Protects: a new session goes to the replica with the most free slots among those that
keep up; one that is behind gets none, except a session being restored after a lost replica; a
session's later requests stay where it was placed until that replica is gone; a full cluster
makes a new session wait; sessions that ended free their slots."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray")
from musicgen_live.bridges.cluster.router import PLACEMENT_S, SessionRouter  # noqa: E402
from musicgen_live.bridges.ws import audio_frame, join_audio_frames  # noqa: E402


@dataclass
class Replica:
    replica_id: str
    routing_stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metadata:
    multiplexed_model_id: str
    call_method: str = "play"


@dataclass
class Context:
    should_backoff: bool = False


@dataclass
class Request:
    metadata: Metadata
    routing_context: Context = field(default_factory=Context)


def router(capacity: int = 2) -> SessionRouter:
    r = SessionRouter.__new__(SessionRouter)  # the framework's constructor needs a deployment; the policy does not
    r.initialize_state(capacity=capacity)
    return r


def choose(r: SessionRouter, replicas: list[Replica], request: Request) -> list[list[Replica]]:
    return asyncio.run(r.choose_replicas(replicas, request))  # type: ignore[arg-type,return-value]


def place(r: SessionRouter, replicas: list[Replica], sid: str, method: str = "play") -> str | None:
    chosen = choose(r, replicas, Request(Metadata(sid, method)))
    return chosen[0][0].replica_id if chosen else None


def stats(sessions: list[str], behind: bool = False, capacity: int = 2) -> dict[str, Any]:
    return {"sessions": sessions, "capacity": capacity, "behind": behind}


def test_new_sessions_fill_the_freest_replica_that_keeps_up_and_stay_there():
    a, b = Replica("a", stats(["x"])), Replica("b", stats([]))
    r = router()
    assert place(r, [a, b], "s1") == "b"  # two free slots against one
    assert place(r, [a, b], "s2") == "a"  # one free each now (s1 counts before b reports it): the first
    assert place(r, [a, b], "s1", "receive") == "b"  # its commands follow it
    assert place(r, [a, b], "s2", "receive") == "a"
    a.routing_stats, b.routing_stats = stats(["x", "s2"]), stats(["s1"])  # the replicas report them
    assert place(r, [a, b], "s3") == "b"
    assert place(r, [a, b], "s4") is None  # full: it waits (Serve asks again)


def test_a_replica_behind_real_time_takes_no_new_session_but_takes_a_restored_one():
    slow, full = Replica("slow", stats([], behind=True)), Replica("full", stats(["p", "q"]))
    r = router()
    req = Request(Metadata("new"))
    assert choose(r, [slow, full], req) == []
    assert req.routing_context.should_backoff  # Serve waits before asking again, not a busy loop
    assert place(r, [slow, full], "lost", "resume") == "slow"  # better behind than silent


def test_a_session_whose_replica_is_gone_is_placed_anew(monkeypatch):
    a, b = Replica("a", stats([])), Replica("b", stats(["y"]))
    r = router()
    assert place(r, [a, b], "s") == "a"
    assert place(r, [b], "s", "resume") == "b"  # a died: Serve no longer offers it
    assert place(r, [b], "s", "receive") == "b"


def test_sessions_that_ended_free_their_slots(monkeypatch):
    import musicgen_live.bridges.cluster.router as placing

    clock = [100.0]
    monkeypatch.setattr(placing.time, "monotonic", lambda: clock[0])
    a = Replica("a", stats([], capacity=1))
    r = router(capacity=1)
    assert place(r, [a], "s1") == "a"
    assert place(r, [a], "s2") is None  # s1 placed, not yet reported: the slot is taken
    clock[0] += PLACEMENT_S + 1  # a's reports never listed s1 (it ended): its slot is free again
    assert place(r, [a], "s2") == "a"


def test_contiguous_audio_frames_join_into_one_and_others_stay_apart():
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-1, 1, (n, 2)).astype(np.float32) for n in (640, 640, 1280)]
    frames = [audio_frame(first, x, 32000, "s16") for first, x in zip((0, 640, 1280), chunks)]
    (joined,) = join_audio_frames(frames)
    assert struct.unpack_from("<QI", joined, 12) == (0, 2560)
    assert joined == audio_frame(0, np.concatenate(chunks), 32000, "s16")
    gap = audio_frame(5000, chunks[0], 32000, "s16")  # not contiguous
    other = audio_frame(2560, chunks[0], 32000, "f32")  # another codec
    assert join_audio_frames([frames[0], gap, other]) == [frames[0], gap, other]
