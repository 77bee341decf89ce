"""Reads off the generation thread, jobs that wait for them, the stall watchdog and log lines that
never block. Protects: a read's value, error and deadline reach the job that waits; a waiting job
takes no turns; stalled reads are bounded; the watchdog tells a stuck turn (and where) and its end,
and nothing while paused or between turns; a log line is never waited for."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from musicgen_live.engine.errors import AudioInputError
from musicgen_live.streamer.jobs import Job
from musicgen_live.streamer.lines import LineWriter
from musicgen_live.streamer.reads import Read, Reader, wait
from musicgen_live.streamer.watchdog import Watchdog, where_stuck


def _settle(read: Read, timeout: float = 5.0) -> None:
    end = time.perf_counter() + timeout
    while not read.settled:
        assert time.perf_counter() < end
        time.sleep(0.005)


def test_a_read_hands_its_value_or_error_once():
    reader = Reader(timeout_s=5)
    ok = reader.start(lambda: 42, "reading 'a.wav'")
    _settle(ok)
    assert ok.outcome() == 42
    bad = reader.start(lambda: (_ for _ in ()).throw(AudioInputError("'b.wav' is empty")), "reading 'b.wav'")
    _settle(bad)
    with pytest.raises(AudioInputError, match="empty"):
        bad.outcome()
    assert Read.ready("x").settled and Read.ready("x").outcome() == "x"


def test_a_read_past_its_deadline_fails_and_stalled_reads_are_bounded():
    release = threading.Event()
    reader = Reader(timeout_s=0.2, limit=2)
    slow = [reader.start(lambda: release.wait(10), f"reading '{i}.wav'") for i in range(2)]
    with pytest.raises(AudioInputError, match="2 earlier reads have not finished"):
        reader.start(lambda: 1, "reading 'c.wav'")
    t0 = time.perf_counter()
    _settle(slow[0])
    assert time.perf_counter() - t0 < 1
    with pytest.raises(AudioInputError, match=r"reading '0.wav' took longer than 0.2 s"):
        slow[0].outcome()
    release.set()
    end = time.perf_counter() + 5
    while reader.unfinished:  # the threads return: room again
        assert time.perf_counter() < end
        time.sleep(0.01)
    assert reader.start(lambda: 1, "reading 'd.wav'") is not None


def test_a_job_waiting_on_a_read_takes_no_turns_until_it_has_settled():
    release = threading.Event()
    read = Reader(timeout_s=10).start(lambda: (release.wait(10), "clip")[1], "reading 'e.wav'")
    work = []

    def steps():
        amount = yield
        clip = yield from wait(read)
        while len(work) < 3:
            work.append((clip, amount))
            amount = yield
        return len(work)

    job = Job(steps(), "continue")
    job.advance(0.01)
    assert job.awaiting is read and not job.ready and not job.done
    t0 = time.perf_counter()
    for _ in range(100):
        job.advance(None)  # everything that is left: still returns at once, the read runs on
    assert time.perf_counter() - t0 < 0.5 and work == []
    release.set()
    _settle(read)
    assert job.ready
    while not job.done:
        job.advance(0.01)
    assert job.result == 3 and work[0][0] == "clip" and job.error is None


class FakeLoop:
    def __init__(self) -> None:
        self.turns = 0
        self.turn_began: float | None = None
        self.thread = threading.current_thread()
        self.is_playing = True

    def playing(self) -> bool:
        return self.is_playing

    def median_step_s(self) -> float:
        return 0.02


def test_the_watchdog_tells_a_stuck_turn_once_and_its_end():
    loop, said = FakeLoop(), []
    started, release = threading.Event(), threading.Event()

    def generation_turn():  # the watched thread, stuck
        started.set()
        release.wait(10)

    loop.thread = threading.Thread(target=generation_turn)
    loop.thread.start()
    started.wait(5)
    dog = Watchdog(loop, 1.0, lambda where, s: said.append(("stall", where, s)), lambda s: said.append(("on", s)))
    try:
        loop.turn_began = 100.0
        dog.check(100.5)
        assert said == []  # within the limit: a slow turn, not a stall
        dog.check(101.2)
        dog.check(101.5)
        assert len(said) == 1 and said[0][0] == "stall" and said[0][2] == pytest.approx(1.2)
        assert said[0][1].startswith("generation_turn (")  # where the thread is
        loop.turn_began, loop.turns = None, 1
        dog.check(102.0)
        assert said[1] == ("on", pytest.approx(2.0)) and dog.stall is None and dog.stalls == 1
    finally:
        release.set()
        loop.thread.join()


def test_the_watchdog_says_nothing_while_paused_or_between_turns():
    loop, said = FakeLoop(), []
    dog = Watchdog(loop, 1.0, lambda *a: said.append(a), lambda *a: said.append(a))
    dog.check(500.0)  # between turns, however long
    loop.turn_began, loop.is_playing = 100.0, False
    dog.check(200.0)  # a paused session's turn (an idle job piece) may take long: nothing to protect
    assert said == []
    loop.median_step_s = lambda: 0.5  # a slow model: ten of its steps are the limit
    loop.is_playing = True
    dog.check(104.0)
    assert said == [] and dog.limit_s() == 5.0


def test_where_stuck_names_the_function_a_thread_blocks_in():
    started, release = threading.Event(), threading.Event()

    def stuck_in_here():
        started.set()
        release.wait(10)

    t = threading.Thread(target=stuck_in_here)
    t.start()
    started.wait(5)
    try:
        assert where_stuck(t).startswith("stuck_in_here (")
    finally:
        release.set()
        t.join()
    assert "ended" in where_stuck(t)


def test_a_log_line_is_never_waited_for_even_when_nobody_reads():
    r, w = os.pipe()
    os.set_blocking(w, True)
    stream = io.TextIOWrapper(io.FileIO(w, "w"), write_through=True)
    writer = LineWriter(stream, limit=10)
    t0 = time.perf_counter()
    for i in range(5000):  # ~250 KB: far past the pipe's 64 KB, which nobody drains
        writer("x" * 50 + str(i))
    assert time.perf_counter() - t0 < 1.0
    assert writer.dropped > 0
    os.set_blocking(r, False)
    got = b""
    end = time.perf_counter() + 5
    while b"log lines dropped" not in got and time.perf_counter() < end:
        try:
            got += os.read(r, 1 << 16)
        except BlockingIOError:
            time.sleep(0.01)
    assert b"log lines dropped" in got
    os.close(r)
