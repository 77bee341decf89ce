"""EnCodec for MusicGen: an exact streaming decoder and a whole-clip encoder.

The decoder is non-causal (reflect-padded convolutions), yet every layer's right context is
finite, so a stateful decoder can emit each sample as soon as no future code can change it and
still equal the whole-sequence decode. Its layers, each with an explicit per-stream state, are in
`engine.codec_layers`; past a few frames of warm-up, a stream's pushes can run compiled
(`engine.codec_step`). The encoder (audio -> codes, whole clip or in pieces) is
`engine.codec_encoder`; `Codec` holds both halves over one checkpoint's weights.

Units: codes arrive in frames (hop = prod(ratios) samples each); everything else is in samples at
the rate of the layer it flows through. `hold_back_samples` is how many output samples stay
unreleased after a push (2402 for MusicGen's 32 kHz codec: frames 0..F make samples
[0, hop*(F+1) - 2402) final).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from .codec_encoder import Encoder
from .codec_layers import (
    CODEC_PRECISIONS,
    ELU,
    LSTMState,
    StreamConv1d,
    StreamConvTranspose1d,
    StreamLSTM,
    StreamResBlock,
    conv_whole,
    flush_chain,
)
from .codec_step import CodecStream, CompiledCodec, steady
from .errors import CodesError, UserError
from .spec import CodecSpec

# -- several streams' layer states as one batch (Codec.push_many) --------------------------------

_UNEQUAL = object()  # states that cannot be stacked (different shapes or counters)


def _batch_dim(state: Any) -> int:
    return 1 if isinstance(state, LSTMState) else 0  # h / c are (layers, B, C)


def _merge(states: list[Any]) -> Any:
    """One state whose tensors stack the streams' along their batch dimension, or _UNEQUAL."""
    first = states[0]
    if first is None or isinstance(first, (bool, int, float)):
        return first if all(s == first for s in states) else _UNEQUAL
    if isinstance(first, list):
        if any(len(s) != len(first) for s in states):
            return _UNEQUAL
        parts = [_merge([s[j] for s in states]) for j in range(len(first))]
        return _UNEQUAL if any(p is _UNEQUAL for p in parts) else parts
    if isinstance(first, torch.Tensor):
        raise TypeError("tensors are merged by their owning state")
    merged = {}
    dim = _batch_dim(first)
    for f in fields(first):
        values = [getattr(s, f.name) for s in states]
        v0 = values[0]
        if isinstance(v0, torch.Tensor):
            if any(not isinstance(v, torch.Tensor) for v in values):
                return _UNEQUAL
            rest = [v.shape[:dim] + v.shape[dim + 1 :] for v in values]
            if any(r != rest[0] for r in rest):
                return _UNEQUAL
            merged[f.name] = torch.cat(values, dim=dim)
        else:
            m = _merge(values)
            if m is _UNEQUAL:
                return _UNEQUAL
            merged[f.name] = m
    return type(first)(**merged)


def _split(state: Any, sizes: list[int]) -> list[Any]:
    """Undo `_merge`: one state per stream, `sizes` rows of the batch each."""
    if state is None or isinstance(state, (bool, int, float)):
        return [state] * len(sizes)
    if isinstance(state, list):
        columns = [_split(s, sizes) for s in state]
        return [[col[j] for col in columns] for j in range(len(sizes))]
    dim = _batch_dim(state)
    per: list[dict[str, Any]] = [{} for _ in sizes]
    for f in fields(state):
        v = getattr(state, f.name)
        parts = v.split(sizes, dim=dim) if isinstance(v, torch.Tensor) else _split(v, sizes)
        for d, p in zip(per, parts):
            d[f.name] = p
    return [type(state)(**d) for d in per]


# -- the whole codec ---------------------------------------------------------------------------


@dataclass
class DecoderState:
    """One batch of lock-stepped streams: a state per layer plus counters (in samples / frames)."""

    layers: list[Any]
    batch: int
    frames_in: int = 0
    samples_out: int = 0
    pending_codes: list[torch.Tensor] = field(default_factory=list)  # codes held until warm-up is possible
    compiled: CodecStream | None = None  # past the warm-up, with a compiled codec: `layers` are stale


class Codec:
    """EnCodec weights (weight norm baked) plus the streaming decoder and the prompt encoder."""

    def __init__(
        self,
        spec: CodecSpec,
        tensors: dict[str, torch.Tensor],
        device: torch.device | str = "cpu",
        precision: str = "float32",
        compiled: bool | None = None,
    ) -> None:
        """`precision`: the streaming decoder's large matrices (CODEC_PRECISIONS); int8 is CPU only.
        `compiled`: streams past their warm-up push through `engine.codec_step`'s kernel (True; an
        UserError where it cannot be built), never (False), or where the precision is int8 and
        the kernel builds (None: the live CPU format; the Python decoder otherwise)."""
        check_codec_precision(precision, torch.device(device))
        self.spec = spec
        self.precision = precision
        t = {k[len("audio_encoder.") :]: v.to(device) for k, v in tensors.items() if k.startswith("audio_encoder.")}
        self.codebooks = [t[f"quantizer.layers.{q}.codebook.embed"].float() for q in range(spec.num_quantizers)]
        self._t = t
        self.decoder_layers = self._build_decoder(t)
        lstm_key = f"encoder.layers.{len(spec.ratios) * (spec.num_residual_layers + 2) + 1}"
        scale = 2 ** len(spec.ratios)
        self.encoder = Encoder(spec, t, self.codebooks, self._lstm(t, lstm_key, scale * spec.num_filters))
        self.hold_back = self._hold_back()
        # shortest code sequence the streaming path handles; shorter ones are decoded whole
        self.min_stream_frames = self.decoder_layers[0].right + 1
        self.compiled = self._compile(compiled, torch.device(device))

    def _compile(self, want: bool | None, device: torch.device) -> CompiledCodec | None:
        if want is False or (want is None and (self.precision != "int8" or device.type != "cpu")):
            return None
        if device.type != "cpu":
            raise UserError("the compiled codec runs on the CPU only")
        try:
            return CompiledCodec(self.decoder_layers, self.codebooks)  # the layers' own matrices
        except UserError:
            if want:
                raise
            return None  # no compiler here: the Python decoder plays (MusicGen.load says so)

    # construction walks the layer list in the same order transformers builds it, so the i-th
    # entry maps to the i-th `layers.{i}` key of the checkpoint.
    def with_precision(self, precision: str, compiled: bool | None = None) -> Codec:
        """The same weights with the streaming decoder at another precision (to compare them)."""
        tensors = {"audio_encoder." + k: v for k, v in self._t.items()}
        return Codec(self.spec, tensors, self.codebooks[0].device, precision, compiled)

    def _conv(self, t: dict[str, torch.Tensor], key: str, dilation: int = 1) -> StreamConv1d:
        return StreamConv1d(t[key + ".conv.weight"], t[key + ".conv.bias"], dilation, self.spec)

    def _res(self, t: dict[str, torch.Tensor], key: str, dilation: int) -> StreamResBlock:
        convs = [self._conv(t, f"{key}.block.1", dilation), self._conv(t, f"{key}.block.3")]
        shortcut = self._conv(t, f"{key}.shortcut") if self.spec.use_conv_shortcut else None
        return StreamResBlock(convs, shortcut)

    def _lstm(self, t: dict[str, torch.Tensor], key: str, dim: int, precision: str = "float32") -> StreamLSTM:
        lstm = torch.nn.LSTM(dim, dim, self.spec.num_lstm_layers)
        lstm.load_state_dict({k[len(key) + 6 :]: v for k, v in t.items() if k.startswith(key + ".lstm.")})
        return StreamLSTM(lstm.to(self.codebooks[0].device).eval(), precision)

    def _build_decoder(self, t: dict[str, torch.Tensor]) -> list[Any]:
        s = self.spec
        scale = 2 ** len(s.ratios)
        layers: list[Any] = [
            self._conv(t, "decoder.layers.0"),
            self._lstm(t, "decoder.layers.1", scale * s.num_filters, self.precision),
        ]
        i = 2
        for ratio in s.ratios:
            layers.append(ELU())
            key = f"decoder.layers.{i + 1}"
            layers.append(
                StreamConvTranspose1d(t[key + ".conv.weight"], t[key + ".conv.bias"], ratio, s, self.precision)
            )
            i += 2
            for j in range(s.num_residual_layers):
                layers.append(self._res(t, f"decoder.layers.{i}", s.dilation_growth_rate**j))
                i += 1
        layers.append(ELU())
        layers.append(self._conv(t, f"decoder.layers.{i + 1}"))
        return layers

    def _hold_back(self) -> int:
        """Output samples that stay unreleased after a push, from the layers' lookahead and trims."""
        per_sample = self.spec.hop  # output samples per sample at the current layer's rate
        held = 0
        for layer in self.decoder_layers:
            if isinstance(layer, StreamConv1d):
                held += layer.lookahead * per_sample
            elif isinstance(layer, StreamConvTranspose1d):
                per_sample //= layer.stride
                held += layer.left * per_sample
            elif isinstance(layer, StreamResBlock):
                held += sum(c.lookahead for c in layer.convs) * per_sample
        return held

    # -- decode --------------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor) -> None:
        """Codes must be integer (B, K, T) with K = quantizers and values in [0, codebook_size)."""
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise CodesError(f"codes must be integers, got {codes.dtype}")
        if codes.dim() != 3:
            raise CodesError(f"codes must have shape (batch, codebooks, frames), got {tuple(codes.shape)}")
        if codes.shape[1] != self.spec.num_quantizers:
            raise CodesError(f"codes have {codes.shape[1]} codebooks, this codec uses {self.spec.num_quantizers}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.spec.codebook_size):
            raise CodesError(
                f"codes must lie in 0..{self.spec.codebook_size - 1}, got {int(codes.min())}..{int(codes.max())}"
            )

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """RVQ decode: (B, K, T) codes -> (B, dim, T) latents, summed in codebook order."""
        out = torch.full((), 0.0, device=codes.device)
        for q in range(codes.shape[1]):
            out = out + F.embedding(codes[:, q], self.codebooks[q])
        return out.permute(0, 2, 1)

    def new_stream(self, batch: int = 1) -> DecoderState:
        return DecoderState(layers=[layer.init() for layer in self.decoder_layers], batch=batch)

    def reset(self, st: DecoderState) -> None:
        """Forget everything: the next push starts a new stream (with its warm-up)."""
        st.layers = [layer.init() for layer in self.decoder_layers]
        st.frames_in = st.samples_out = 0
        st.pending_codes = []
        st.compiled = None

    @torch.no_grad()
    def push(self, st: DecoderState, codes: torch.Tensor) -> torch.Tensor:
        """Feed (B, K, T) code frames; return (B, channels, n) samples that just became final."""
        if st.compiled is not None:
            st.frames_in += codes.shape[-1]
            out = st.compiled.push(codes)
            st.samples_out += out.shape[-1]
            return out
        st.frames_in += codes.shape[-1]
        st.pending_codes.append(codes)
        if st.frames_in < self.min_stream_frames:
            return codes.new_zeros((st.batch, self.spec.channels, 0), dtype=torch.float32)
        x = self.embed(torch.cat(st.pending_codes, dim=-1))
        st.pending_codes = []
        for layer, lst in zip(self.decoder_layers, st.layers):
            x = layer.push(lst, x)
        st.samples_out += x.shape[-1]
        if self.compiled is not None and steady(self.decoder_layers, st.layers):
            st.compiled = self.compiled.start(st.layers, st.batch)  # the next push runs compiled
        return x

    @torch.no_grad()
    def push_many(self, states: list[DecoderState], codes: list[torch.Tensor]) -> list[torch.Tensor]:
        """`push` for several independent streams at once: those past their warm-up that push the
        same number of frames go through the layers as one batch, so each weight matrix is read
        once for all of them (the decoder's cost is mostly reading ~100 MB of fp32 weights per
        push). The samples equal separate pushes up to float rounding (a GEMM's last bits depend
        on its row count); the rest are pushed one by one. With a compiled codec every stream is
        pushed on its own: its kernel is faster alone than the Python layers are batched."""
        if self.compiled is not None:
            return [self.push(st, c) for st, c in zip(states, codes)]
        out: list[torch.Tensor | None] = [None] * len(states)
        groups: dict[int, list[int]] = {}
        for i, (st, c) in enumerate(zip(states, codes)):
            if st.frames_in >= self.min_stream_frames and not st.pending_codes and c.shape[-1]:
                groups.setdefault(c.shape[-1], []).append(i)
            else:
                out[i] = self.push(st, c)
        for T, idx in groups.items():
            merged = [_merge([states[i].layers[n] for i in idx]) for n in range(len(self.decoder_layers))]
            if len(idx) == 1 or any(m is _UNEQUAL for m in merged):
                for i in idx:
                    out[i] = self.push(states[i], codes[i])
                continue
            sizes = [states[i].batch for i in idx]
            x = self.embed(torch.cat([codes[i] for i in idx]))
            for layer, lst in zip(self.decoder_layers, merged):
                x = layer.push(lst, x)
            for n, m in enumerate(merged):
                for i, part in zip(idx, _split(m, sizes)):
                    states[i].layers[n] = part
            for i, y in zip(idx, x.split(sizes)):
                states[i].frames_in += T
                states[i].samples_out += y.shape[-1]
                out[i] = y
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def flush(self, st: DecoderState) -> torch.Tensor:
        """End the streams: return the held-back samples (the right edge's padding applied)."""
        if st.frames_in < self.min_stream_frames:
            # too short to stream (the reference zero-extends inside its reflect pad): decode whole
            out = self.decode(torch.cat(st.pending_codes, dim=-1)) if st.pending_codes else None
            st.pending_codes = []
            if out is None:
                return torch.zeros((st.batch, self.spec.channels, 0))
            st.samples_out += out.shape[-1]
            return out
        if st.compiled is not None and self.compiled is not None:  # the edge is Python's
            st.layers = self.compiled.stop(st.compiled)
            st.compiled = None
        x = flush_chain(zip(self.decoder_layers, st.layers))
        assert x is not None
        st.samples_out += x.shape[-1]
        return x

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, channels, samples) at the codec rate -> codes (B, K, frames), whole clip, exactly
        as the reference computes it (`engine.codec_encoder`)."""
        return self.encoder.encode(audio)

    def encode_steps(self, audio: torch.Tensor) -> Generator[None, int | None, torch.Tensor]:
        """`encode` a piece at a time (`Encoder.encode_steps`)."""
        return self.encoder.encode_steps(audio)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Whole-sequence decode (B, K, T) -> (B, channels, T * hop), as the reference computes it."""
        x = self.embed(codes)
        for layer in self.decoder_layers:
            x = _whole(layer, x)
        return x


def _whole(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """Run one streaming layer over a whole sequence in one go (for short sequences and tests)."""
    if isinstance(layer, StreamConv1d):
        return conv_whole(x, layer.weight, layer.bias, 1, layer.dilation, layer.spec)
    if isinstance(layer, StreamConvTranspose1d):
        y = F.conv_transpose1d(x, layer.weight, layer.bias, stride=layer.stride)
        return y[..., layer.left : y.shape[-1] - layer.right]
    if isinstance(layer, StreamResBlock):
        y = x
        for conv in layer.convs:
            y = _whole(conv, F.elu(y))
        skip = _whole(layer.shortcut, x) if layer.shortcut else x
        return skip + y
    if isinstance(layer, StreamLSTM):
        seq = x.permute(2, 0, 1)
        return (layer.lstm(seq)[0] + seq).permute(1, 2, 0)
    return F.elu(x)


def check_codec_precision(precision: str, device: torch.device, exact: bool = False) -> None:
    """One clear sentence for a codec precision this device or kernel choice cannot run."""
    if exact and precision != "float32":
        raise UserError("the exact (parity) path decodes in float32 (codec float32)")
    if precision not in CODEC_PRECISIONS:
        raise UserError(f"unknown codec precision '{precision}' (choose one of {', '.join(CODEC_PRECISIONS)})")
    if precision == "int8" and device.type != "cpu":
        raise UserError("an int8 codec runs on the CPU only (fbgemm); on a GPU keep codec float32")
