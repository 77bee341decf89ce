"""Codebook interleaving patterns as data, against audiocraft's own pattern providers.

Protects: for every provider audiocraft 1.3.0 has - parallel, delay (default, custom delays,
flatten_first, empty_initial 1 and -1), unroll (full and partial flattening, with delays),
coarse_first, musiclm - and run lengths from 1 frame up, our layout is step-for-step audiocraft's
`Pattern.layout`, building a sequence from codes gives audiocraft's `build_pattern_sequence` and
reverting gives its `revert_pattern_sequence` (a whole sequence and a cut one); a config section
reads as audiocraft's builder reads it (q_modeling fallback included); a pattern audiocraft would
refuse is refused in one sentence.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from musicgen_live.engine.codebook_patterns import PatternError, PatternSpec

SPECIAL = 2048

PROVIDERS: list[tuple[str, dict[str, Any], int]] = [  # (modeling, its settings, n_q)
    ("parallel", {}, 4),
    ("parallel", {"empty_initial": 2}, 4),
    ("delay", {}, 4),
    ("delay", {"delays": [0, 2, 2, 5]}, 4),
    ("delay", {"delays": [0, 0, 1, 1, 2, 2, 3, 3]}, 8),  # stereo's pairs
    ("delay", {"flatten_first": 2}, 4),
    ("delay", {"empty_initial": 1}, 4),
    ("delay", {"empty_initial": -1}, 4),
    ("delay", {"flatten_first": 3, "empty_initial": 1, "delays": [0, 1, 1, 3]}, 4),
    ("unroll", {}, 4),
    ("unroll", {"flattening": [0, 1, 1, 1]}, 4),
    ("unroll", {"flattening": [0, 1, 1, 1], "delays": [0, 2, 2, 2]}, 4),
    ("unroll", {"flattening": [0, 2, 2, 3], "delays": [0, 1, 1, 2]}, 4),  # an empty inner step
    ("coarse_first", {}, 4),
    ("coarse_first", {"delays": [0, 1, 2]}, 4),
    ("musiclm", {}, 4),
    ("musiclm", {"group_by": 1}, 4),
]
IDS = [f"{m}-{'-'.join(f'{k}{v}' for k, v in s.items()) or 'default'}-{n}" for m, s, n in PROVIDERS]


def provider(ac: Any, modeling: str, settings: dict[str, Any], n_q: int) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"modeling": modeling, modeling: settings})
    return ac.models.builders.get_codebooks_pattern_provider(n_q, cfg)


@pytest.mark.parametrize(("modeling", "settings", "n_q"), PROVIDERS, ids=IDS)
def test_layout_build_and_revert_are_audiocrafts(ac, modeling, settings, n_q):
    ours = PatternSpec.from_config({"modeling": modeling, modeling: settings}, n_q)
    theirs = provider(ac, modeling, settings, n_q)
    for frames in (1, 2, 3, 7, 16):
        want = theirs.get_pattern(frames)
        got = ours.layout(frames)
        assert [[tuple(c) for c in step] for step in want.layout] == [list(step) for step in got.steps], frames
        assert got.starts_with_special == want.starts_with_special_token()
        codes = torch.randint(0, SPECIAL, (2, n_q, frames), generator=torch.Generator().manual_seed(frames))
        sequence, _, _ = want.build_pattern_sequence(codes, SPECIAL)
        assert torch.equal(got.build(codes, SPECIAL), sequence)
        for cut in (sequence.shape[-1], max(1, sequence.shape[-1] // 2)):
            reverted, _, _ = want.revert_pattern_sequence(sequence[..., :cut].contiguous(), SPECIAL)
            assert torch.equal(got.revert(sequence[..., :cut], SPECIAL), reverted), (frames, cut)
        if frames > 1:  # a prompt of frames - 1 frames: where audiocraft starts sampling
            assert got.first_step_with(frames - 1) == want.get_first_step_with_timesteps(frames - 1)


def test_a_frame_is_complete_at_the_step_that_holds_its_last_codebook():
    lay = PatternSpec.from_config({"modeling": "unroll", "unroll": {"flattening": [0, 1, 1, 1]}}, 4).layout(3)
    # steps: BOS, (0,q0), (0,q1..3), (1,q0), (1,q1..3), ...: frame t completes at step 2 + 2t
    assert lay.completed_by().tolist() == [2, 4, 6]
    assert PatternSpec.delay((0, 1, 2, 3)).layout(3).completed_by().tolist() == [4, 5, 6]


def test_a_config_reads_as_audiocrafts_builder_reads_it():
    assert PatternSpec.from_config({"modeling": None}, 4, q_modeling="delay") == PatternSpec.delay((0, 1, 2, 3))
    assert PatternSpec.from_config({"modeling": "parallel"}, 4).plain_delays == (0, 0, 0, 0)
    assert PatternSpec.from_config({"modeling": "delay", "delay": {"delays": [0, 1, 2, 3]}}, 4).plain_delays == (
        0,
        1,
        2,
        3,
    )
    assert PatternSpec.from_config({"modeling": "delay", "delay": {"flatten_first": 2}}, 4).plain_delays is None
    partial = PatternSpec.from_config({"modeling": "unroll", "unroll": {"flattening": [0, 1, 1, 1]}}, 4)
    assert partial.describe() == "unroll flattening [0, 1, 1, 1]" and partial.streams
    assert not PatternSpec("musiclm", 4).streams and PatternSpec("musiclm", 4).describe() == "musiclm"


@pytest.mark.parametrize(
    ("cfg", "n_q", "message"),
    [
        ({"modeling": "spiral"}, 4, "not a codebook pattern"),
        ({"modeling": None}, 4, "neither"),
        ({"modeling": "delay", "delay": {"delays": [0, 1, 2]}}, 4, "3 values for 4 codebooks"),
        ({"modeling": "delay", "delay": {"delays": [0, 2, 1, 3]}}, 4, "never decrease"),
        ({"modeling": "unroll", "unroll": {"flattening": [0, 1, 1, 1], "delays": [0, 1, 2, 2]}}, 4, "same delay"),
        ({"modeling": "musiclm", "musiclm": {"group_by": 3}}, 4, "does not divide"),
        ({"modeling": "delay", "delay": {"group_by": 2}}, 4, "takes delays"),
    ],
)
def test_a_pattern_audiocraft_would_refuse_is_refused_in_one_sentence(cfg, n_q, message):
    with pytest.raises(PatternError, match=message):
        PatternSpec.from_config(cfg, n_q)


def test_the_command_line_spelling_reads_as_the_config_section():
    assert PatternSpec.parse("unroll:flattening=0,1,1,1", 4) == PatternSpec("unroll", 4, flattening=(0, 1, 1, 1))
    both = PatternSpec.parse("delay:flatten_first=2:empty_initial=-1", 4)
    assert (both.flatten_first, both.empty_initial, both.describe()) == (
        2,
        -1,
        "delay flatten_first 2 empty_initial -1",
    )
    assert PatternSpec.parse(" musiclm:group_by=1", 4).group_by == 1
    for bad, message in (("delay:flatten_first", "not KEY=VALUE"), ("unroll:flattening=a,b", "whole numbers")):
        with pytest.raises(PatternError, match=message):
            PatternSpec.parse(bad, 4)
