"""MusicGen's codebook interleaving patterns as data: which (frame, codebook) positions each LM
step predicts together.

A checkpoint is trained with one pattern; it must be played with that pattern. audiocraft names
them by provider (`audiocraft/modules/codebooks_patterns.py`) and records the choice in its config
(`codebooks_pattern`): parallel, delay (with `delays`, `flatten_first`, `empty_initial`), unroll
(`flattening`, `delays`), coarse_first (`delays`) and musiclm (`group_by`). `PatternSpec` is that
choice; `PatternSpec.layout(frames)` is the pattern for a run of `frames` frames, built as the
provider builds it, so a layout here is step-for-step audiocraft's.

Units: a *frame* (t) is one codec step; a *step* (s) is one LM position. Step 0 is the special
(BOS) step unless `empty_initial` is negative. Sequences here are (..., K, S) token tensors,
codes are (..., K, T).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Coord = tuple[int, int]  # (frame t, codebook q)

MODELINGS = ("parallel", "delay", "unroll", "coarse_first", "musiclm")


class PatternError(ValueError):
    """A pattern description that names no pattern we (or audiocraft) can build."""


@dataclass(frozen=True)
class PatternSpec:
    """One codebook pattern, as audiocraft's config describes it. Fields a provider does not read
    stay at their defaults."""

    modeling: str
    n_q: int
    delays: tuple[int, ...] = ()  # delay, unroll, coarse_first (empty = the provider's default)
    flatten_first: int = 0  # delay: the first frames one codebook a step
    empty_initial: int = 0  # delay, parallel: empty steps after BOS (negative: no BOS step at all)
    flattening: tuple[int, ...] = ()  # unroll: each codebook's inner step (empty = one a step)
    group_by: int = 2  # musiclm: codebooks generated together, each group over the whole run

    def __post_init__(self) -> None:
        if self.modeling not in MODELINGS:
            raise PatternError(f"'{self.modeling}' is not a codebook pattern (one of {', '.join(MODELINGS)})")
        if self.n_q < 1:
            raise PatternError("a pattern needs at least one codebook")
        want = self.n_q - 1 if self.modeling == "coarse_first" else self.n_q
        for name, values in (("delays", self.delays), ("flattening", self.flattening)):
            if values and len(values) != want:
                raise PatternError(f"{name} {list(values)} give {len(values)} values for {want} codebooks")
            if list(values) != sorted(values) or any(v < 0 for v in values):
                raise PatternError(f"{name} {list(values)} must be >= 0 and never decrease")
        if self.modeling == "unroll":
            per_step: dict[int, int] = {}
            for inner, delay in zip(self.flattening or range(self.n_q), self.delays or [0] * self.n_q):
                if per_step.setdefault(inner, delay) != delay:
                    raise PatternError("codebooks flattened to the same inner step must have the same delay")
        if self.modeling == "musiclm" and (self.group_by < 1 or self.n_q % self.group_by):
            raise PatternError(f"group_by {self.group_by} does not divide {self.n_q} codebooks")
        if self.flatten_first < 0:
            raise PatternError("flatten_first must be >= 0")

    @classmethod
    def delay(cls, delays: tuple[int, ...]) -> PatternSpec:
        """The plain delay pattern (what every released MusicGen checkpoint uses)."""
        return cls("delay", len(delays), delays=tuple(delays))

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None, n_q: int, q_modeling: str | None = None) -> PatternSpec:
        """audiocraft's `codebooks_pattern` section (with `transformer_lm.q_modeling` as its
        fallback when `modeling` is unset, as audiocraft's builder does)."""
        cfg = dict(cfg or {})
        name = cfg.get("modeling")
        if name is None:
            if q_modeling is None:
                raise PatternError("no codebook pattern: neither codebooks_pattern.modeling nor q_modeling is set")
            name, cfg = q_modeling, {"delay": {"delays": list(range(n_q))}}
        if name not in MODELINGS:
            raise PatternError(f"'{name}' is not a codebook pattern (one of {', '.join(MODELINGS)})")
        args = dict(cfg.get(name) or {})
        known = _ARGUMENTS[name]
        if set(args) - known:
            raise PatternError(
                f"the {name} pattern takes {', '.join(sorted(known)) or 'no settings'}, not {sorted(args)}"
            )
        ints = {k: tuple(int(v) for v in args[k]) for k in ("delays", "flattening") if args.get(k) is not None}
        return cls(
            name,
            n_q,
            flatten_first=int(args.get("flatten_first", 0)),
            empty_initial=int(args.get("empty_initial", 0)),
            group_by=int(args.get("group_by", 2)),
            **ints,
        )

    @classmethod
    def parse(cls, text: str, n_q: int) -> PatternSpec:
        """'NAME[:KEY=VALUE[,VALUE...]]...' -> a pattern for `n_q` codebooks, e.g. 'unroll',
        'unroll:flattening=0,1,1,1', 'delay:flatten_first=2:empty_initial=1' (the command line's
        and config.toml's spelling of a config section)."""
        name, *settings = text.strip().split(":")
        args: dict[str, Any] = {}
        for item in settings:
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise PatternError(f"'{item}' in pattern '{text}' is not KEY=VALUE (e.g. flattening=0,1,1,1)")
            try:
                values = [int(v) for v in value.split(",")]
            except ValueError:
                raise PatternError(f"'{item}' in pattern '{text}': values are whole numbers") from None
            args[key] = values if key in ("delays", "flattening") else values[0]
        return cls.from_config({"modeling": name, name: args}, n_q)

    @property
    def plain_delays(self) -> tuple[int, ...] | None:
        """The delays, when this is a plain delay pattern (parallel included): one step a frame,
        BOS first, every codebook k at frame step - 1 - d_k. None for every other pattern."""
        if self.modeling not in ("delay", "parallel") or self.flatten_first or self.empty_initial:
            return None
        return (0,) * self.n_q if self.modeling == "parallel" else self.delays or tuple(range(self.n_q))

    @property
    def streams(self) -> bool:
        """Whether a run's first steps do not depend on its length (so it can play endlessly):
        coarse_first and musiclm generate one group of codebooks over the whole run first."""
        return self.modeling not in ("coarse_first", "musiclm")

    def describe(self) -> str:
        """How `render` / `serve` name it: 'delay [0, 1, 2, 3]', 'unroll flattening [0, 1, 1, 1]'."""
        parts = [self.modeling]
        defaults = PatternSpec(self.modeling, self.n_q)
        for name in ("delays", "flattening", "flatten_first", "empty_initial", "group_by"):
            value = getattr(self, name)
            if value != getattr(defaults, name) and (name != "group_by" or self.modeling == "musiclm"):
                parts.append(f"{name} {list(value) if isinstance(value, tuple) else value}")
        return " ".join(parts)

    def layout(self, frames: int) -> Layout:
        """The pattern for a run of `frames` frames (audiocraft's `get_pattern(frames)`)."""
        return Layout(tuple(tuple(step) for step in _BUILDERS[self.modeling](self, frames)), frames, self.n_q)


def max_frames_for(pattern: PatternSpec, positions: int) -> int:
    """The most frames a run of `pattern` holds in `positions` LM positions."""
    lo, hi = 0, positions
    while lo < hi:  # layouts grow with their frames: the longest that fits
        mid = (lo + hi + 1) // 2
        if pattern.layout(mid).length <= positions:
            lo = mid
        else:
            hi = mid - 1
    return lo


_ARGUMENTS = {
    "parallel": {"empty_initial"},
    "delay": {"delays", "flatten_first", "empty_initial"},
    "unroll": {"flattening", "delays"},
    "coarse_first": {"delays"},
    "musiclm": {"group_by"},
}


def _delay_steps(p: PatternSpec, frames: int) -> list[list[Coord]]:
    delays = list(p.delays or range(p.n_q)) if p.modeling == "delay" else [0] * p.n_q
    out: list[list[Coord]] = [] if p.empty_initial < 0 else [[]]
    out += [[] for _ in range(max(0, p.empty_initial))]
    ff = p.flatten_first if p.modeling == "delay" else 0
    for t in range(min(frames, ff)):
        out += [[(t, q)] for q in range(p.n_q)]
    for t in range(ff, frames + max(delays)):
        out.append([(t - d, q) for q, d in enumerate(delays) if t - d >= ff])
    return out


def _unroll_steps(p: PatternSpec, frames: int) -> list[list[Coord]]:
    flattening = list(p.flattening or range(p.n_q))
    delays = list(p.delays or [0] * p.n_q)
    inner: dict[int, tuple[list[int], int]] = {}
    for q, (step, delay) in enumerate(zip(flattening, delays)):
        inner.setdefault(step, ([], delay))[0].append(q)
    last = frames + max(delays)
    keyed: list[tuple[int, list[Coord]]] = [(-1, [])]
    for t in range(last):
        for step in range(max(inner) + 1):
            if step in inner:
                qs, delay = inner[step]
                if t + delay < last:
                    keyed.append((t + delay, [(t, q) for q in qs]))
            else:
                keyed.append((t, []))
    return [coords for _, coords in sorted(keyed)]  # audiocraft's order: by (key, coords)


def _coarse_first_steps(p: PatternSpec, frames: int) -> list[list[Coord]]:
    delays = list(p.delays or [0] * (p.n_q - 1))
    out: list[list[Coord]] = [[]] + [[(t, 0)] for t in range(frames)]
    for t in range(frames + max(delays, default=0)):
        out.append([(t - d, q + 1) for q, d in enumerate(delays) if t - d >= 0])
    return out


def _musiclm_steps(p: PatternSpec, frames: int) -> list[list[Coord]]:
    out: list[list[Coord]] = [[]]
    for first in range(0, p.n_q, p.group_by):
        for t in range(frames):
            out += [[(t, q)] for q in range(first, first + p.group_by)]
    return out


_BUILDERS = {
    "parallel": _delay_steps,
    "delay": _delay_steps,
    "unroll": _unroll_steps,
    "coarse_first": _coarse_first_steps,
    "musiclm": _musiclm_steps,
}


@dataclass(frozen=True)
class Layout:
    """A pattern for a run of `frames` frames: `steps[s]` holds the positions step s predicts
    (positions at frames >= `frames` are the pattern's tail: nothing is held there)."""

    steps: tuple[tuple[Coord, ...], ...]
    frames: int
    n_q: int
    at: np.ndarray = field(init=False, repr=False, compare=False)  # (K, S) frame each step holds, -1 = none

    def __post_init__(self) -> None:
        at = np.full((self.n_q, len(self.steps)), -1, dtype=np.int64)
        last = [-1] * self.n_q
        for s, coords in enumerate(self.steps):
            if len({q for _, q in coords}) != len(coords):
                raise PatternError(f"step {s} holds one codebook twice")
            for t, q in coords:
                if t < last[q]:
                    raise PatternError(f"codebook {q} goes back in time at step {s}")
                last[q] = t
                if t < self.frames:
                    at[q, s] = t
        object.__setattr__(self, "at", at)

    @property
    def length(self) -> int:
        """Steps, the special step included."""
        return len(self.steps)

    @property
    def starts_with_special(self) -> bool:
        return self.steps[0] == ()

    def first_step_with(self, frame: int) -> int | None:
        """The first step that holds any codebook of `frame` (where a run with `frame` frames of
        prompt starts sampling)."""
        hits = np.flatnonzero((self.at == frame).any(axis=0))
        return int(hits[0]) if len(hits) else None

    def completed_by(self) -> np.ndarray:
        """(frames,) the step at which each frame's last codebook is held (-1: never)."""
        done = np.full(self.frames, -1, dtype=np.int64)
        counts = np.zeros(self.frames, dtype=np.int64)  # codebooks held of each frame
        for q in range(self.n_q):
            steps = np.flatnonzero(self.at[q] >= 0)
            np.maximum.at(done, self.at[q][steps], steps)
            np.add.at(counts, self.at[q][steps], 1)
        return np.where(counts == self.n_q, done, -1)

    def build(self, codes: torch.Tensor, special: int) -> torch.Tensor:
        """Codes (..., K, T <= frames) -> the sequence (..., K, S): each step's positions, the
        special token where a step holds nothing (or a frame past T)."""
        T = codes.shape[-1]
        at = torch.from_numpy(self.at).to(codes.device)
        valid = (at >= 0) & (at < T)
        flat = codes.new_full((*codes.shape[:-1], T + 1), special)
        flat[..., :T] = codes
        index = torch.where(valid, at, T).expand(*codes.shape[:-1], -1)
        return torch.gather(flat, -1, index)

    def revert(self, sequence: torch.Tensor, special: int) -> torch.Tensor:
        """The sequence (..., K, S' <= S) -> codes (..., K, frames): each frame's codebook from
        the step that holds it, `special` where no step up to S' does."""
        S = sequence.shape[-1]
        out = sequence.new_full((*sequence.shape[:-1], self.frames), special)
        for q in range(self.n_q):
            steps = np.flatnonzero(self.at[q, :S] >= 0)
            out[..., q, torch.from_numpy(self.at[q, steps])] = sequence[..., q, torch.from_numpy(steps)]
        return out
