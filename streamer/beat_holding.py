"""A session's quantized changes: with a beat clock (Ableton Link) and `quantize` > 0, a musical change
(a control of QUANTIZED_CONTROLS, a prompt) is held until the step whose audio starts nearest its
beat, so the performer hears it on the bar."""

from __future__ import annotations

from . import commands as c
from .controls import (
    QUANTIZED_CONTROLS,
)
from .quantize import next_boundary, ring_position
from .session_parts import NO_CLOCK, PLAYING, SessionParts


class BeatHolding(SessionParts):
    """Quantized changes, held until the step whose audio starts nearest their beat."""

    def _hold(self, ticket: c.Ticket) -> bool:
        """Hold a musical change for the next `quantize` boundary (True: held, or refused), or let
        it apply now."""
        cmd = ticket.command
        musical = isinstance(cmd, (c.SetPrompt, c.SetWeightedPrompts)) or (
            isinstance(cmd, c.Set) and cmd.name in QUANTIZED_CONTROLS
        )
        own = getattr(cmd, "quantize", None)  # this change's own quantize, over the session's
        q = float(self.controls["quantize"] if own is None else own)
        if musical and own and self.clock is None:
            self._refuse(ticket, NO_CLOCK)
            return True
        if not (musical and q > 0 and self.clock is not None and self.state == PLAYING and self.gen.started):
            return False
        t_read, read = self.output.sample_clock
        landing = self._landing(ticket)
        half_frame_s = 0.5 * self.hop / self.rate
        ticket.beat = next_boundary(self.clock, t_read + (landing - read) / self.output.rate - half_frame_s, q)
        if isinstance(cmd, c.Set):
            self._held.append(ticket)
            return True
        return False  # a prompt prepares now (`_on_prompt`) and lands on its beat (`_finish_prompt`)

    def _landing(self, ticket: c.Ticket) -> int:
        """The output ring position where `ticket` would first be heard if applied now."""
        cmd = ticket.command
        if isinstance(cmd, c.Set) and cmd.name == "gain":
            return self._unbuffered()
        return self._frame_position(self.gen.next_frame)

    def _frame_position(self, frame: int) -> int:
        """The output ring position of frame `frame`'s first sample (since the codec stream began)."""
        f0, s0 = self.codec_origin
        return self.sink.device_position(s0 + max(0, frame - f0) * self.hop)

    def _unbuffered(self) -> int:
        """The first output ring position not yet written: where a gain change is first heard."""
        return self.output.ring.written + 1

    def _due(self, ticket: c.Ticket) -> bool:
        """Whether `ticket`'s beat is within half a frame of where it would land now (or passed)."""
        if ticket.beat is None or self.clock is None or self.state != PLAYING:
            return True  # nothing to be on the beat with: at once
        target = ring_position(self.clock, ticket.beat, self.output.sample_clock, self.output.rate)
        landing = self._landing(ticket)
        half_frame = 0.5 * self.sink.device_position(self.hop)
        if landing < target - half_frame:
            return False
        late_ms = 1000 * (landing - target) / self.output.rate
        if late_ms > 1000 * self.hop / self.rate:
            ticket.note = f"late for beat {ticket.beat:g} by {late_ms:.0f} ms"
        return True

    def _release_held(self) -> None:
        """Apply every held change whose beat has come, in the order they were sent (a change
        with a sooner beat of its own does not wait behind one held for a later bar)."""
        if not self._held:
            return
        due = [t for t in self._held if self._due(t)]
        if due:
            self._held = [t for t in self._held if t not in due]
            for ticket in due:
                self._apply(ticket)
