"""The blend board: the performer's prompt slots, each a text and a weight, kept in place.

A performer blends prompts on `SLOTS` slots (the browser page's rows, an OSC surface's faders):
a slot's text stays where they put it at any weight, 0 included, so pulling a fader down and up
again brings the same prompt back in the same row. What sounds is the slots above 0; the board is
part of the state every client shares, so another page, a reload or an OSC surface sees the same
rows. A prompt sent from elsewhere (`prompt`, `prompt/weighted`, the page's prompt line) never
moves a text: the slots holding its texts take its weights, the others go to 0, and a text no slot
holds takes the first empty one.
"""

from __future__ import annotations

from .controls import MAX_PROMPTS

SLOTS = MAX_PROMPTS  # rows of the board: as many as can sound at once

Board = tuple[tuple[str, float], ...]  # SLOTS (text, weight) pairs; "" = an empty slot


def empty_board(prompt: str = "") -> Board:
    return ((prompt, 1.0 if prompt else 0.0),) + (("", 0.0),) * (SLOTS - 1)


def as_board(pairs: tuple[tuple[str, float], ...]) -> Board:
    """Slots given in order (fewer than `SLOTS`: the rest empty)."""
    if len(pairs) > SLOTS:
        raise ValueError(f"the blend has {SLOTS} slots, got {len(pairs)}")
    return tuple((text, float(weight)) for text, weight in pairs) + (("", 0.0),) * (SLOTS - len(pairs))


def sounding(board: Board) -> list[tuple[str, float]]:
    """The prompts the board plays: its slots with text and a weight above 0, in slot order."""
    return [(text, weight) for text, weight in board if text and weight > 0]


def fit(board: Board, prompts: list[tuple[str, float]]) -> Board:
    """The board after `prompts` were sent from elsewhere: texts stay in their slots and take the
    prompts' weights (0 when not among them); a new text takes the first empty slot."""
    weights = {text: weight for text, weight in prompts}
    slots = [(text, weights.pop(text, 0.0) if text else 0.0) for text, _ in board]
    for text, _ in prompts:
        if text not in weights:
            continue  # placed already
        free = next((i for i, (t, _) in enumerate(slots) if not t), None)
        if free is None:
            break  # no room: it sounds, the page's prompt line shows it
        slots[free] = (text, weights.pop(text))
    return tuple(slots)
