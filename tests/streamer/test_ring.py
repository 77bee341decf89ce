"""The SPSC ring. Protects: order across wrap-around, zero fill on underflow, flush requests, history."""

import numpy as np
from musicgen_live.streamer.ring import AudioRing, HistoryRing


def test_frames_come_out_in_order_across_wraparound():
    ring = AudioRing(10, 2)
    out = np.empty((4, 2), np.float32)
    seen = []
    for i in range(0, 40, 3):
        ring.write(np.arange(i, i + 3, dtype=np.float32)[:, None].repeat(2, 1))
        if ring.fill >= 4:
            assert ring.read_into(out) == 4
            seen.extend(out[:, 0].tolist())
    assert seen == list(range(len(seen)))


def test_underflow_reads_what_there_is_and_zeros_the_rest():
    ring = AudioRing(8, 1)
    ring.write(np.ones((3, 1), np.float32))
    out = np.full((5, 1), 7.0, np.float32)
    assert ring.read_into(out) == 3
    assert out[:3, 0].tolist() == [1, 1, 1] and out[3:, 0].tolist() == [0, 0]


def test_a_full_ring_drops_what_does_not_fit():
    ring = AudioRing(4, 1)
    assert ring.write(np.ones((6, 1), np.float32)) == 4
    assert ring.space == 0


def test_flush_request_is_honoured_by_the_reader():
    ring = AudioRing(16, 1)
    ring.write(np.ones((5, 1), np.float32))
    ring.request_flush()
    assert ring.fill == 0
    ring.write(np.full((2, 1), 3.0, np.float32))
    out = np.zeros((4, 1), np.float32)
    assert ring.read_into(out) == 2 and out[:2, 0].tolist() == [3, 3]


def test_history_keeps_the_last_seconds():
    h = HistoryRing(1.0, 10, 1)
    for i in range(25):
        h.append(np.array([[i]], np.float32))
    assert h.seconds == 1.0
    assert h.last(0.5)[:, 0].tolist() == [20, 21, 22, 23, 24]
    assert h.last(5)[:, 0].tolist() == list(range(15, 25))
