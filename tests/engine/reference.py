"""transformers as the reference: greedy generation with the codes captured where `generate` hands
them to its codec (shared by the parity tests of every checkpoint kind)."""

from __future__ import annotations

from typing import Any

import torch


def generate_codes(hf: Any, cfg: float, frames: int, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (K, frames), audio) of `hf.generate(**inputs)`, greedy at guidance `cfg`. A stereo
    checkpoint hands over the left codebooks, then the right: re-interleaved here."""
    seen: list[torch.Tensor] = []
    decode = hf.audio_encoder.decode

    def spy(codes, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(codes.clone())
        return decode(codes, *args, **kwargs)

    hf.audio_encoder.decode = spy
    try:
        with torch.no_grad():
            wav = hf.generate(**inputs, do_sample=False, guidance_scale=cfg, max_new_tokens=frames + 3)
    finally:
        hf.audio_encoder.decode = decode
    if len(seen) == 1:
        return seen[0][0, 0], wav[0]
    left, right = seen[0][0, 0], seen[1][0, 0]  # (K / 2, frames) each
    return torch.stack([left, right], dim=1).reshape(-1, left.shape[-1]), wav[0]
