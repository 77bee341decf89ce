"""Latency probes and the estimate bridges schedule timetagged bundles with. Protects: a command is
heard when the output reads past its first sample; the estimate uses healthy commands only (none
answered across an internal error or an underrun) and recovers within its window after a bad
stretch."""

from musicgen_live.streamer import commands as c
from musicgen_live.streamer.probes import WINDOW, LatencyProbes


def heard_after(probes: LatencyProbes, ms: float, trouble_then: int, trouble_now: int) -> None:
    t = c.Ticket(c.Set("cfg", 3.0))
    t.accepted = 100.0
    probes.add(t, device_frame=10, trouble=trouble_then)

    def heard_at(position: int) -> float:
        return 100.0 + ms / 1000 + (position - 10) / 1000  # an output clock: 1000 samples a second

    assert probes.resolve(9, heard_at, trouble_now) == []  # not read yet
    assert probes.resolve(12, heard_at, trouble_now) == [t]  # read past it, noticed late: heard at its own sample
    assert abs(t.latency_ms - ms) < 1e-6


def test_a_bad_stretch_does_not_spoil_the_estimate():
    probes = LatencyProbes()
    assert probes.estimate_ms() is None
    for _ in range(10):
        heard_after(probes, 350.0, 0, 0)
    for _ in range(50):  # a stuck stretch: steps failing, commands heard 15 s late
        heard_after(probes, 15_000.0, 0, 7)
    assert abs(probes.estimate_ms() - 350.0) < 1e-6
    for _ in range(WINDOW):  # healthy again, at a new steady latency: the window moves on to it
        heard_after(probes, 300.0, 7, 7)
    assert abs(probes.estimate_ms() - 300.0) < 1e-6
