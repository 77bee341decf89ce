"""The delay pattern as data: which code frame each LM column holds, per codebook.

Units: a *frame* is one codec step (hop samples); a *column* is one LM position. Codebook k is
delayed by d_k columns (d_k = k for mono; stereo's L/R codebook pairs share a delay), so column t
holds codebook k of frame t - 1 - d_k. Column 0 is all BOS. A frame is complete - every codebook
known - once column frame + 1 + max(d) exists. A finite run of N frames feeds the pad token for
frames >= N, which is what the reference does in its last columns.
"""

from __future__ import annotations

import numpy as np
import torch


class DelayPattern:
    def __init__(self, delays: tuple[int, ...], special_token: int) -> None:
        self.delays = delays
        self.special = special_token
        self.num_codebooks = len(delays)
        self.max_delay = max(delays)
        self._delays_t = torch.tensor(delays, dtype=torch.long)
        self._delays_np = np.array(delays, dtype=np.int64)

    def frames_of_column(self, column: int) -> torch.Tensor:
        """Frame index held by each codebook at `column` (negative = before the first frame)."""
        return column - 1 - self._delays_t

    def completed_frame(self, column: int) -> int | None:
        """The frame that `column` completes (its last codebook), or None in the warm-up columns."""
        frame = column - 1 - self.max_delay
        return frame if frame >= 0 else None

    def columns_for_frames(self, frames: int) -> int:
        """Columns (BOS included) that hold every codebook of `frames` frames."""
        return frames + 1 + self.max_delay

    def interleave(self, codes: torch.Tensor, total_frames: int | None = None) -> torch.Tensor:
        """Codes (..., K, F) -> columns (..., K, F + 1 + max_delay), BOS / pad where nothing is held."""
        n = codes.shape[-1]
        total = n if total_frames is None else total_frames
        cols = self.columns_for_frames(n)
        out = codes.new_full((*codes.shape[:-1], cols), self.special)
        for k, d in enumerate(self.delays):
            out[..., k, 1 + d : 1 + d + min(n, total)] = codes[..., k, : min(n, total)]
        return out

    def deinterleave(self, columns: torch.Tensor) -> torch.Tensor:
        """Columns (..., K, C) -> codes (..., K, C - 1 - max_delay) of the frames they complete."""
        n = columns.shape[-1] - 1 - self.max_delay
        if n <= 0:
            return columns[..., :0]
        return torch.stack([columns[..., k, 1 + d : 1 + d + n] for k, d in enumerate(self.delays)], dim=-2)

    def columns(
        self, frames: torch.Tensor, base: int, origin: int, first: int, count: int, total_frames: int | None
    ) -> torch.Tensor:
        """Input columns first..first+count-1 (K, count) of a window whose column 1 holds frame `origin`.

        `frames` (K, F), an int64 CPU tensor, holds absolute frames base..base+F-1. BOS before the
        window's first frame (a window re-prompted at `origin` restarts the pattern), pad at or
        past `total_frames` (a finite run), else the frame's code.
        """
        held = frames.numpy()  # the frame buffer is a CPU tensor; numpy indexing costs far less than torch's
        if count == 1:  # the per-step case, in plain ints (~3 us against ~30 for the vector form)
            col = []
            for k, d in enumerate(self.delays):
                f = origin + first - 1 - d
                known = f >= origin and (total_frames is None or f < total_frames)
                col.append(int(held[k, f - base]) if known else self.special)
            return torch.tensor(col).view(-1, 1)
        t = np.arange(first, first + count)
        fs = origin + t[None, :] - 1 - self._delays_np[:, None]  # (K, count) absolute frames
        valid = fs >= origin
        if total_frames is not None:
            valid &= fs < total_frames
        idx = np.clip(fs - base, 0, held.shape[-1] - 1)
        return torch.from_numpy(np.where(valid, np.take_along_axis(held, idx, axis=-1), self.special))
