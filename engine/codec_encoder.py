"""EnCodec's encoder: audio to codes for a continuation or a prompt, whole clip or a piece at a time.

The whole-clip path runs the reference's layers exactly (the same codes, bit for bit); `encode_steps`
spreads the same computation over pieces a live stream can afford between two steps, each layer
fed as a stream (`EncoderFeed`). The residual vector quantizer (`quantize`) ends both.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch
import torch.nn.functional as F

from .codec_layers import StreamLSTM, conv_whole, pad_edges, whole_pads
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
        lstm_at = next(i for i, (kind, _) in enumerate(self.layers) if kind == "lstm")
        lstm: StreamLSTM = self.layers[lstm_at][1]
        seq = self._run_encoder_steps(self.layers[:lstm_at], audio.float()).permute(2, 0, 1)
        latents = (lstm.lstm(seq)[0] + seq).permute(1, 2, 0)
        return self.quantize(self._run_encoder_steps(self.layers[lstm_at + 1 :], latents))

    def encode_steps(self, audio: torch.Tensor) -> Generator[None, int | None, torch.Tensor]:
        """`encode`, a piece at a time for a live stream that must not stall: each piece feeds the
        audio of the number of frames sent in (`steps.send(n)`; None or `next()` = all the rest).

        Sent None at once it is the whole-clip computation, bit for bit. In pieces the audio flows
        through the layers as a stream (`EncoderFeed`): every layer keeps the inputs it has not
        used yet and computes each output once, with the clip's own edge padding and frame grid,
        so a frame costs about what it costs whole at any piece size; the codes differ from the
        whole clip's only where float rounding moves a latent across a codeword boundary."""
        x = audio.float()
        amount = yield
        feed = EncoderFeed(self, x.shape[-1])  # layers' geometry only: no tensor work
        if amount is None or not feed.streams:
            return self.encode(x)
        codes, fed, n = [], 0, x.shape[-1]
        while True:
            end = n if amount is None else min(n, fed + max(1, amount) * self.spec.hop)
            with torch.no_grad():
                codes.append(self.quantize(feed.push(x[..., fed:end], final=end == n)))
            fed = end
            if fed == n:
                return torch.cat(codes, dim=-1)
            amount = yield

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


class ConvFeed:
    """One EnCodec Conv1d over a signal of known length `length` (samples) that arrives in pieces:
    `conv_whole`'s padding and frame grid, each output computed once. It keeps the inputs its next
    output needs and the last `right + 1` for the right edge's padding, made at the final piece."""

    def __init__(
        self, w: torch.Tensor, b: torch.Tensor, stride: int, dilation: int, length: int, spec: CodecSpec
    ) -> None:
        self.w, self.b, self.stride, self.dilation, self.mode = w, b, stride, dilation, spec.pad_mode
        self.k_eff = (w.shape[-1] - 1) * dilation + 1
        self.left, self.right = whole_pads(self.k_eff, stride, length, spec)
        self.outputs = (length + self.left + self.right - self.k_eff) // stride + 1  # what the whole signal gives
        self.length = length
        self._buf: torch.Tensor | None = None  # padded inputs not yet consumed
        self._tail: torch.Tensor | None = None  # the last right + 1 inputs
        self._seen = 0
        self._started = False

    @property
    def fits(self) -> bool:
        """Whether the signal is longer than the layer's padding (else the reference zero-extends
        it first, which only the whole-clip path does)."""
        return self.length > max(self.left, self.right)

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """The outputs (B, C_out, n) that the inputs so far complete (all the rest if `final`)."""
        self._seen += x.shape[-1]
        if self.right:
            self._tail = x if self._tail is None else torch.cat([self._tail, x], dim=-1)
            self._tail = self._tail[..., -(self.right + 1) :]
        buf = x if self._buf is None else torch.cat([self._buf, x], dim=-1)
        if not self._started:
            if buf.shape[-1] <= self.left and not final:
                self._buf = buf
                return self._none(x)
            if self.left:
                head = pad_edges(buf[..., : self.left + 1], (self.left, 0), self.mode)[..., : self.left]
                buf = torch.cat([head, buf], dim=-1)
            self._started = True
        if final:
            if self._seen != self.length:
                raise ValueError(f"fed {self._seen} samples to a layer built for {self.length}")
            if self.right:
                assert self._tail is not None
                edge = pad_edges(self._tail, (0, self.right), self.mode)[..., -self.right :]
                buf = torch.cat([buf, edge], dim=-1)
        n = (buf.shape[-1] - self.k_eff) // self.stride + 1 if buf.shape[-1] >= self.k_eff else 0
        self._buf = buf[..., n * self.stride :]
        if n == 0:
            return self._none(x)
        used = buf[..., : (n - 1) * self.stride + self.k_eff]
        return F.conv1d(used, self.w, self.b, stride=self.stride, dilation=self.dilation)

    def _none(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape[0], self.w.shape[0], 0)


class ResFeed:
    """A residual block fed in pieces: ELU -> conv -> ELU -> conv, plus the skip held back until
    the convolutions' outputs catch up (their lookahead)."""

    def __init__(self, convs: list[ConvFeed], shortcut: ConvFeed | None) -> None:
        self.convs, self.shortcut = convs, shortcut
        self._held: torch.Tensor | None = None

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        y = x
        for conv in self.convs:
            y = conv.push(F.elu(y), final)
        skip = self.shortcut.push(x, final) if self.shortcut is not None else x
        held = skip if self._held is None else torch.cat([self._held, skip], dim=-1)
        n = y.shape[-1]
        self._held = held[..., n:]
        return held[..., :n] + y


class EncoderFeed:
    """The encoder's layers as streams for one clip of `samples` samples: `push` takes the next
    audio and gives the latents (B, D, frames) it completes; the final push gives the rest."""

    def __init__(self, encoder: Encoder, samples: int) -> None:
        t, spec = encoder._t, encoder.spec
        self._steps: list[tuple[str, Any]] = []
        self._convs: list[ConvFeed] = []  # every convolution, in order
        n = samples
        for kind, arg in encoder.layers:
            if kind == "conv":
                key, stride, dilation = arg
                feed = ConvFeed(t[key + ".conv.weight"], t[key + ".conv.bias"], stride, dilation, n, spec)
                self._steps.append(("feed", feed))
                self._convs.append(feed)
                n = feed.outputs
            elif kind == "res":
                key, dilation = arg
                convs = [
                    ConvFeed(t[f"{key}.block.1.conv.weight"], t[f"{key}.block.1.conv.bias"], 1, dilation, n, spec),
                    ConvFeed(t[f"{key}.block.3.conv.weight"], t[f"{key}.block.3.conv.bias"], 1, 1, n, spec),
                ]
                shortcut = None
                if spec.use_conv_shortcut:
                    shortcut = ConvFeed(t[f"{key}.shortcut.conv.weight"], t[f"{key}.shortcut.conv.bias"], 1, 1, n, spec)
                self._steps.append(("feed", ResFeed(convs, shortcut)))
                self._convs += [*convs, *([shortcut] if shortcut is not None else [])]
            elif kind == "lstm":
                self._steps.append(("lstm", (arg, arg.init())))
            else:
                self._steps.append((kind, arg))

    @property
    def streams(self) -> bool:
        """Whether the clip is long enough for every layer to stream it (a clip of a few frames is
        encoded whole: the reference zero-extends signals shorter than a pad)."""
        return all(conv.fits for conv in self._convs)

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        for kind, arg in self._steps:
            if kind == "feed":
                x = arg.push(x, final)
            elif kind == "lstm":
                lstm, state = arg
                x = lstm.push(state, x)
            elif kind == "elu":
                x = F.elu(x)
            else:
                raise ValueError(f"cannot feed encoder step {kind}")
        return x
