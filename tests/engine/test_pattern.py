"""The delay pattern as data. Protects: column layout, round trips, completion, end pads."""

import pytest
import torch
from musicgen_live.engine.pattern import DelayPattern

BOS = 2048


def test_interleave_places_codebook_k_of_frame_f_at_column_f_plus_1_plus_k():
    pat = DelayPattern((0, 1, 2, 3), BOS)
    codes = torch.arange(4 * 5).view(4, 5)
    cols = pat.interleave(codes)
    assert cols.shape == (4, 5 + 4)
    assert (cols[:, 0] == BOS).all()
    for k in range(4):
        for f in range(5):
            assert cols[k, f + 1 + k] == codes[k, f]
        assert (cols[k, : 1 + k] == BOS).all()


def test_deinterleave_inverts_interleave():
    pat = DelayPattern((0, 1, 2, 3), BOS)
    codes = torch.randint(0, 2048, (2, 4, 13))
    assert torch.equal(pat.deinterleave(pat.interleave(codes)), codes)


def test_stereo_pairs_share_a_delay():
    pat = DelayPattern(tuple(k // 2 for k in range(8)), BOS)
    codes = torch.randint(0, 2048, (8, 6))
    cols = pat.interleave(codes)
    assert cols.shape[-1] == 6 + 1 + 3
    assert torch.equal(cols[0, 1:7], codes[0]) and torch.equal(cols[1, 1:7], codes[1])
    assert torch.equal(cols[6, 4:10], codes[6]) and torch.equal(cols[7, 4:10], codes[7])
    assert torch.equal(pat.deinterleave(cols), codes)


def test_completed_frame_needs_the_last_codebook():
    pat = DelayPattern((0, 1, 2, 3), BOS)
    assert [pat.completed_frame(c) for c in range(7)] == [None, None, None, None, 0, 1, 2]


def test_columns_of_a_finite_run_feed_pads_past_the_end():
    pat = DelayPattern((0, 1, 2, 3), BOS)
    frames = torch.arange(4 * 3).view(4, 3)
    # column 4 holds frame 3 of codebook 0 (past a 3-frame run: pad) and frame 0 of codebook 3
    col = pat.columns(frames, 0, 0, 4, 1, total_frames=3)[:, 0]
    assert col.tolist() == [BOS, frames[1, 2], frames[2, 1], frames[3, 0]]
    endless = pat.columns(torch.cat([frames, frames], 1), 0, 0, 4, 1, total_frames=None)[:, 0]
    assert endless[0] == frames[0, 0]  # frame 3 = first column of the second copy


def test_columns_equal_the_interleaved_layout_and_restart_at_a_window_origin():
    pat = DelayPattern((0, 1, 2, 3), BOS)
    codes = torch.randint(0, 2048, (4, 9))
    assert torch.equal(pat.columns(codes, 0, 0, 0, 13, total_frames=9), pat.interleave(codes))
    # a window re-prompted at frame 5 sees frames 5.. as if they were the start of a stream
    assert torch.equal(pat.columns(codes, 0, 5, 0, 8, total_frames=9), pat.interleave(codes[:, 5:]))


@pytest.mark.parametrize("delays", [(0, 1, 2, 3), (0, 0, 1, 1, 2, 2, 3, 3)])
def test_one_column_path_equals_the_vector_path(delays):
    """Each step reads one column through a plain-int shortcut; it must match the general form
    at window origins, buffer bases and the end of a finite run."""
    pat = DelayPattern(delays, BOS)
    frames = torch.randint(0, 2048, (len(delays), 40))
    for origin, base, total in [(0, 0, None), (0, 0, 12), (7, 3, None), (7, 5, 20)]:
        for first in range(0, 25):
            whole = pat.columns(frames, base, origin, first, 3, total)
            assert torch.equal(pat.columns(frames, base, origin, first, 1, total), whole[:, :1])
