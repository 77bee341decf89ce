"""The streaming decoder's layers: each an object with immutable weights and an explicit
per-stream state (`init` / `push` / `flush`), in the manner of moshi's streaming modules.

- stride-1 conv: keeps the last K_eff-1 inputs; on the first chunk it waits for enough samples to
  reflect-pad the left edge; `flush` appends the right edge's padding.
- transposed conv: keeps the overlapping output tail (no bias) and adds it to the next output;
  trims the left padding at the start and emits the tail minus the right trim at `flush`.
- residual block: the identity path is delayed to line up with the conv path.
- LSTM: carries (h, c).

Units: samples at the rate of the layer the data flows through; tensors are (batch, channels,
samples). `engine.codec` chains them; `engine.codec_step` runs their steady state compiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .linear import Int8Linear, linear_skinny
from .spec import CodecSpec

# How the streaming decoder multiplies by its large matrices (the LSTM's and the transposed
# convolutions' kernels, ~100 MB of fp32 for the 32 kHz codec, most of what a push reads):
# `float32` is exact; `int8` reads a quarter of the bytes through fbgemm (each row's activations
# quantised on their own, so a stream's audio does not depend on what shares its push), at an SNR
# measured by `musicgen-live bench-codec --precision int8`. The whole-clip encoder and `decode`
# stay float32.
CODEC_PRECISIONS = ("float32", "int8")


class WeightMul:
    """x @ w.T for the few rows a push carries, at `precision` (one of CODEC_PRECISIONS). The
    compiled codec multiplies by the same matrix (`kernel_form`): int8 weights quantised once for
    both decoders."""

    def __init__(self, w: torch.Tensor, precision: str = "float32") -> None:
        self.lin = Int8Linear(w) if precision == "int8" else None
        self.w = None if self.lin is not None else w  # int8 keeps only its packed weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.lin is not None:
            return self.lin(x, independent_rows=True)
        assert self.w is not None
        return linear_skinny(x, self.w)

    def kernel_form(self) -> Any:
        """The matrix as `kernels.CodecStep` takes it: int8's (fbgemm packed weights, anchor row),
        or float32 w (out, in)."""
        if self.lin is not None:
            return (self.lin.packed, self.lin.anchor)
        assert self.w is not None
        return self.w.float().contiguous()


# -- layers ------------------------------------------------------------------------------------


@dataclass
class ConvState:
    buf: torch.Tensor | None = None  # inputs not yet consumed (at most K_eff - 1 once started)
    started: bool = False


class StreamConv1d:
    """Stride-1 Conv1d with EnCodec's padding (reflect or constant), streamed exactly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dilation: int, spec: CodecSpec) -> None:
        self.weight, self.bias, self.dilation, self.spec = weight, bias, dilation, spec
        k_eff = (weight.shape[-1] - 1) * dilation + 1
        total = k_eff - 1
        if spec.causal:
            self.left, self.right = total, 0
        else:
            self.right = total // 2
            self.left = total - self.right
        self.context = total  # inputs kept between pushes
        self.mode = spec.pad_mode
        self.lookahead = self.right  # input samples needed beyond an output's position

    def init(self) -> ConvState:
        return ConvState()

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation)

    def push(self, st: ConvState, x: torch.Tensor) -> torch.Tensor:
        x = x if st.buf is None else torch.cat([st.buf, x], dim=-1)
        if not st.started:
            # the left edge is padded from the first samples, so wait until there are enough
            if x.shape[-1] < max(self.left, self.right) + 1:
                st.buf = x
                return x[..., :0].new_empty(x.shape[0], self.weight.shape[0], 0)
            x = pad_edges(x, (self.left, 0), self.mode)
            st.started = True
        st.buf = x[..., x.shape[-1] - self.context :] if self.context else x[..., :0]
        if x.shape[-1] <= self.context:
            return x.new_empty(x.shape[0], self.weight.shape[0], 0)
        return self._conv(x)

    def flush(self, st: ConvState, whole: torch.Tensor | None = None) -> torch.Tensor:
        if st.buf is None or not st.started:
            raise RuntimeError("flush before the stream started: decode short sequences whole")
        x = pad_edges(st.buf, (0, self.right), self.mode) if self.right else st.buf
        st.buf = None
        if x.shape[-1] <= self.context:
            return x.new_empty(x.shape[0], self.weight.shape[0], 0)
        return self._conv(x)


@dataclass
class ConvTransposeState:
    tail: torch.Tensor | None = None  # overlapping outputs without bias, length stride
    to_trim: int = 0  # left-trim samples still to drop


class StreamConvTranspose1d:
    """ConvTranspose1d(k, stride) with EnCodec's fixed trims, streamed by overlap-add."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, stride: int, spec: CodecSpec, precision: str = "float32"
    ) -> None:
        self.weight, self.bias, self.stride = weight, bias, stride
        k = weight.shape[-1]
        total = k - stride
        self.right = math.ceil(total * spec.trim_right_ratio) if spec.causal else total // 2
        self.left = total - self.right
        self.overlap = k - stride
        self._bias = bias.view(1, -1, 1)
        # (k * Cout, Cin), rows tap-major: the kernel as one matrix, so a push is one GEMM plus an
        # overlap-add (the compiled codec multiplies by the same one)
        w_mat = weight.permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous() if k % stride == 0 else None
        self.mul = None if w_mat is None else WeightMul(w_mat, precision)

    def _transpose_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv_transpose1d without bias. oneDNN plans a slow kernel for the few-sample inputs a
        stream pushes; the GEMM (row-major input, `linear_skinny`) runs at memory bandwidth."""
        if self.mul is None:
            return F.conv_transpose1d(x, self.weight, None, stride=self.stride)
        B, _, T = x.shape
        S, cout, k = self.stride, self.weight.shape[1], self.weight.shape[2]
        cols = self.mul(x.transpose(1, 2).reshape(B * T, -1).contiguous())
        cols = cols.view(B, T, k, cout).permute(0, 3, 2, 1)  # (B, Cout, k, T)
        y = x.new_zeros(B, cout, (T + k // S - 1) * S)
        for j in range(k // S):
            y[..., j * S : j * S + T * S] += cols[:, :, j * S : (j + 1) * S].transpose(2, 3).reshape(B, cout, T * S)
        return y

    def init(self) -> ConvTransposeState:
        return ConvTransposeState(to_trim=self.left)

    def push(self, st: ConvTransposeState, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return x.new_empty(x.shape[0], self.weight.shape[1], 0)
        y = self._transpose_conv(x)
        if st.tail is not None:
            y[..., : self.overlap] += st.tail
        n = y.shape[-1] - self.overlap
        st.tail = y[..., n:]
        return self._emit(st, y[..., :n])

    def _emit(self, st: ConvTransposeState, y: torch.Tensor) -> torch.Tensor:
        if st.to_trim:
            cut = min(st.to_trim, y.shape[-1])
            y = y[..., cut:]
            st.to_trim -= cut
        return y + self._bias

    def flush(self, st: ConvTransposeState) -> torch.Tensor:
        tail = st.tail
        st.tail = None
        if tail is None:
            raise RuntimeError("flush before any input")
        return self._emit(st, tail[..., : tail.shape[-1] - self.right])


@dataclass
class LSTMState:
    h: torch.Tensor | None = None  # (layers, B, C)
    c: torch.Tensor | None = None


class StreamLSTM:
    """EnCodec's LSTM with its `+ x` skip; (h, c) carry across pushes.

    The recurrence is written out: oneDNN's LSTM kernel re-plans on every short call and costs ~10x
    more than these matmuls for the one or two frames a push carries. The whole-clip encoder keeps
    torch's LSTM (`self.lstm`) so prompt codes match the reference bit for bit.
    """

    def __init__(self, lstm: torch.nn.LSTM, precision: str = "float32") -> None:
        self.lstm = lstm
        n = lstm.num_layers
        w_ih = [getattr(lstm, f"weight_ih_l{i}").detach() for i in range(n)]
        w_hh = [getattr(lstm, f"weight_hh_l{i}").detach() for i in range(n)]
        self.layers = n
        self.bias = [(getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}")).detach() for i in range(n)]
        self.ih = [WeightMul(w, precision) for w in w_ih]
        self.hh = [WeightMul(w, precision) for w in w_hh]
        # [W_ih | W_hh]: a one-frame push reads each layer's weights in one GEMV
        self.cat = [WeightMul(torch.cat([a, b], dim=1).contiguous(), precision) for a, b in zip(w_ih, w_hh)]

    def init(self) -> LSTMState:
        return LSTMState()

    def push(self, st: LSTMState, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return x
        seq = x.permute(2, 0, 1)  # (T, B, C)
        T, B, C = seq.shape
        if st.h is None or st.c is None:
            st.h = seq.new_zeros(self.layers, B, C)
            st.c = seq.new_zeros(self.layers, B, C)
        hs, cs = st.h, st.c
        inp = seq
        for layer, bias in enumerate(self.bias):
            h, c = hs[layer], cs[layer]
            if T == 1:
                pre = [self.cat[layer](torch.cat([inp[0], h], dim=-1)) + bias]
            else:  # (T, B, 4C), gate order i, f, g, o
                pre = self.ih[layer](inp.reshape(T * B, C)).view(T, B, -1) + bias
            outs = []
            for t in range(T):
                gates = pre[t] if T == 1 else pre[t] + self.hh[layer](h)
                i, f, g, o = gates.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            hs[layer], cs[layer] = h, c
            inp = torch.stack(outs)
        return (inp + seq).permute(1, 2, 0)

    def flush(self, st: LSTMState) -> torch.Tensor | None:
        return None


@dataclass
class ResState:
    block: list[Any]
    shortcut: Any
    pending: torch.Tensor | None = None  # shortcut outputs waiting for the conv path to catch up


class StreamResBlock:
    """ELU -> conv(k, dilation) -> ELU -> conv(1), plus a shortcut delayed to line up."""

    def __init__(self, convs: list[StreamConv1d], shortcut: StreamConv1d | None) -> None:
        self.convs = convs
        self.shortcut = shortcut

    def init(self) -> ResState:
        return ResState(block=[c.init() for c in self.convs], shortcut=self.shortcut.init() if self.shortcut else None)

    def push(self, st: ResState, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut.push(st.shortcut, x) if self.shortcut else x
        y = x
        for conv, cst in zip(self.convs, st.block):
            y = conv.push(cst, F.elu(y))
        return self._align(st, skip, y)

    def flush(self, st: ResState) -> torch.Tensor:
        skip = self.shortcut.flush(st.shortcut) if self.shortcut else None
        tail = flush_chain(zip(self.convs, st.block), F.elu)
        assert tail is not None  # a block's convs always hold a tail to flush
        return self._align(st, skip, tail)

    @staticmethod
    def _align(st: ResState, skip: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        pending = st.pending
        if skip is not None:
            pending = skip if pending is None else torch.cat([pending, skip], -1)
        if pending is None:
            raise RuntimeError("the residual path has no samples to add")
        n = y.shape[-1]
        st.pending = pending[..., n:]
        return pending[..., :n] + y


def flush_chain(chain: Any, before: Any = None) -> torch.Tensor | None:
    """Flush a chain of streaming layers: each layer gets the previous one's tail pushed through
    it (after `before`, e.g. the ELU in front of a resblock's convs), then flushes its own."""
    x: torch.Tensor | None = None
    for layer, state in chain:
        head = layer.push(state, before(x) if before else x) if x is not None and x.shape[-1] else None
        tail = layer.flush(state)
        parts = [p for p in (head, tail) if p is not None]
        x = torch.cat(parts, dim=-1) if parts else x
    return x


class ELU:
    def init(self) -> None:
        return None

    def push(self, st: None, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x)

    def flush(self, st: None) -> None:
        return None


def pad_edges(x: torch.Tensor, pads: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "reflect":
        return F.pad(x, pads, mode="reflect")
    return F.pad(x, pads, mode=mode, value=0.0) if mode == "constant" else F.pad(x, pads, mode=mode)


# -- whole-signal convolutions, padded as the reference pads (the encoder, short decodes) -------


def conv_whole(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, dilation: int, spec: CodecSpec
) -> torch.Tensor:
    """One EnCodec Conv1d over a whole signal, padded exactly as the reference pads it."""
    k_eff = (w.shape[-1] - 1) * dilation + 1
    x = pad_whole(x, whole_pads(k_eff, stride, x.shape[-1], spec), spec.pad_mode)
    return F.conv1d(x, w, b, stride=stride, dilation=dilation)


def whole_pads(k_eff: int, stride: int, length: int, spec: CodecSpec) -> tuple[int, int]:
    """(left, right): the samples the reference pads a signal of `length` samples with for a conv
    of effective kernel `k_eff`, the right side rounded up so the last frame is whole."""
    total = k_eff - stride
    n_frames = math.ceil((length - k_eff + total) / stride + 1) - 1
    extra = n_frames * stride + k_eff - total - length
    if spec.causal:
        return total, extra
    right = total // 2
    return total - right, right + extra


def pad_whole(x: torch.Tensor, pads: tuple[int, int], mode: str) -> torch.Tensor:
    """Reflect padding that also works on inputs shorter than the pad (zero-extends first)."""
    if mode != "reflect":
        return pad_edges(x, pads, mode)
    length = x.shape[-1]
    max_pad = max(pads)
    extra = 0
    if length <= max_pad:
        extra = max_pad - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, pads, mode="reflect")
    return padded[..., : padded.shape[-1] - extra]
