"""EnCodec's encoder: audio to codes for a continuation or a prompt, whole clip or a piece at a time.

The whole-clip path runs the reference's layers exactly (the same codes, bit for bit); `encode_steps`
spreads the same computation over pieces a live stream can afford between two steps (see its
docstring for what a piece recomputes). The residual vector quantizer (`quantize`) ends both.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import torch
import torch.nn.functional as F

from .codec_layers import StreamLSTM, conv_whole
from .pieces import run
from .spec import CodecSpec


class Encoder:
    """The encoder's layers as (kind, params) steps over the checkpoint's tensors `t` (keys without
    "audio_encoder."), its LSTM built by the codec, and the quantizer's codebooks."""

    def __init__(
        self, spec: CodecSpec, t: dict[str, torch.Tensor], codebooks: list[torch.Tensor], lstm: StreamLSTM
    ) -> None:
        self.spec = spec
        self._t = t
        self.codebooks = codebooks
        self.layers = self._build(lstm)

    def _build(self, lstm: StreamLSTM) -> list[tuple[str, Any]]:
        """The encoder as (kind, params) steps, run whole-clip exactly as the reference does."""
        s = self.spec
        steps: list[tuple[str, Any]] = [("conv", ("encoder.layers.0", 1, 1))]
        i, scaling = 1, 1
        for ratio in reversed(s.ratios):
            for j in range(s.num_residual_layers):
                steps.append(("res", (f"encoder.layers.{i}", s.dilation_growth_rate**j)))
                i += 1
            steps.append(("elu", None))
            steps.append(("conv", (f"encoder.layers.{i + 1}", ratio, 1)))
            i += 2
            scaling *= 2
        steps.append(("lstm", lstm))  # encoder.layers.{i}: the codec builds it (its device, its LSTM)
        steps.append(("elu", None))
        steps.append(("conv", (f"encoder.layers.{i + 2}", 1, 1)))
        return steps

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, channels, samples) at the codec rate -> codes (B, K, frames), whole clip, exactly
        as the reference computes it."""
        return run(self.encode_steps(audio))

    def encode_steps(self, audio: torch.Tensor) -> Generator[None, int | None, torch.Tensor]:
        """`encode`, a piece at a time for a live stream that must not stall: each piece covers the
        number of frames sent in (`steps.send(n)`; None or `next()` = all the rest).

        A piece runs the convolutions before the LSTM on its frames' receptive field only (a window
        starting on a frame boundary, so every layer's frame grid and the clip's own edge padding
        are the reference's), the LSTM carries its state across pieces, and the last convolution
        and the quantizer follow piece by piece over the finished latents. Exhausted in one piece
        it is the whole-clip computation; in pieces it differs only in float rounding."""
        x = audio.float()
        n, hop = x.shape[-1], self.spec.hop
        pre = self.layers[: self._lstm_index]
        lstm: StreamLSTM = self.layers[self._lstm_index][1]
        post = self.layers[self._lstm_index + 1 :]
        frames = self._encoded_frames(n)
        left, right = self._pre_span
        latents, state = [], lstm.init()
        f = 0
        amount = yield
        while f < frames:
            f1 = frames if amount is None else min(frames, f + max(1, amount))
            a = max(0, (f * hop - left) // hop * hop)  # a frame boundary: the clip's grid
            b = min(n, (f1 - 1) * hop + right + 1)
            with torch.no_grad():
                y = self._run_encoder_steps(pre, x[..., a:b])[..., f - a // hop : f1 - a // hop]
                if f == 0 and f1 == frames:  # one piece: torch's LSTM, as the reference runs it
                    seq = y.permute(2, 0, 1)
                    latents.append((lstm.lstm(seq)[0] + seq).permute(1, 2, 0))
                else:  # torch's LSTM re-plans on every short call; the written-out one carries (h, c)
                    latents.append(lstm.push(state, y))
            f = f1
            amount = yield
        z = torch.cat(latents, dim=-1)
        codes = []
        reach = self._post_reach
        g = 0
        while g < frames:
            g1 = frames if amount is None else min(frames, g + max(1, 4 * amount))  # cheap: 4x the frames
            a = max(0, g - reach)
            with torch.no_grad():
                y = self._run_encoder_steps(post, z[..., a : min(frames, g1 + reach)])[..., g - a : g1 - a]
                codes.append(self.quantize(y))
            g = g1
            if g < frames:
                amount = yield
        return torch.cat(codes, dim=-1)

    def _run_encoder_steps(self, steps: list[tuple[str, Any]], x: torch.Tensor) -> torch.Tensor:
        t = self._t
        for kind, arg in steps:
            if kind == "conv":
                key, stride, dilation = arg
                x = conv_whole(x, t[key + ".conv.weight"], t[key + ".conv.bias"], stride, dilation, self.spec)
            elif kind == "res":
                key, dilation = arg
                y = conv_whole(
                    F.elu(x), t[key + ".block.1.conv.weight"], t[key + ".block.1.conv.bias"], 1, dilation, self.spec
                )
                y = conv_whole(
                    F.elu(y), t[key + ".block.3.conv.weight"], t[key + ".block.3.conv.bias"], 1, 1, self.spec
                )
                skip = x
                if self.spec.use_conv_shortcut:
                    skip = conv_whole(
                        x, t[key + ".shortcut.conv.weight"], t[key + ".shortcut.conv.bias"], 1, 1, self.spec
                    )
                x = skip + y
            elif kind == "elu":
                x = F.elu(x)
            else:
                raise ValueError(f"cannot run encoder step {kind} piecewise")
        return x

    @property
    def _lstm_index(self) -> int:
        return next(i for i, (kind, _) in enumerate(self.layers) if kind == "lstm")

    def _encoded_frames(self, samples: int) -> int:
        """Frames the encoder makes of `samples` samples (each strided conv rounds up)."""
        n = samples
        for kind, arg in self.layers:
            if kind == "conv":
                key, stride, dilation = arg
                k_eff = (self._t[key + ".conv.weight"].shape[-1] - 1) * dilation + 1
                n = math.ceil((n - k_eff + (k_eff - stride)) / stride + 1)
        return n

    def _reach(self, steps: list[tuple[str, Any]]) -> tuple[int, int]:
        """(left, right): the inputs output 0 of `steps` depends on span input samples -left..right."""
        lo, hi = 0, 0
        for kind, arg in reversed(steps):
            if kind == "elu":
                continue
            key, stride, dilation = (arg[0] + ".block.1", 1, arg[1]) if kind == "res" else arg
            k_eff = (self._t[key + ".conv.weight"].shape[-1] - 1) * dilation + 1
            total = k_eff - stride
            pad_left = total if self.spec.causal else total - total // 2
            lo, hi = lo * stride - pad_left, hi * stride - pad_left + k_eff - 1
        return -lo, hi

    @property
    def _pre_span(self) -> tuple[int, int]:
        return self._reach(self.layers[: self._lstm_index])

    @property
    def _post_reach(self) -> int:
        return max(self._reach(self.layers[self._lstm_index + 1 :]))

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Residual VQ: nearest codeword per quantizer on the running residual (reference distance)."""
        residual = latents
        codes = []
        for embed in self.codebooks:
            states = residual.permute(0, 2, 1)
            shape = states.shape
            flat = states.reshape(-1, shape[-1])
            et = embed.t()
            dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ et + et.pow(2).sum(0, keepdim=True))
            idx = dist.max(dim=-1).indices.view(*shape[:-1])
            codes.append(idx)
            residual = residual - F.embedding(idx, embed).permute(0, 2, 1)
        return torch.stack(codes, dim=1)
