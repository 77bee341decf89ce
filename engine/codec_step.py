"""The streaming decoder's steady state as one compiled call a push (`kernels/codec_step.cpp`).

Why: musicgen-small's codec costs ~6.8 ms a frame in Python (int8), of which the int8 matrices
and the convolutions are ~2.6 ms; the rest is ~600 small torch calls, state concatenations and the
batch-independent rows' extra ops. Past its warm-up (the first four frames, where the left edge is
padded and the transposed convolutions trim) every layer takes and gives a fixed number of samples
a push, so the kernel keeps each layer's state at the head of a preallocated buffer.

The warm-up and the flush stay in `engine.codec` (they happen once a stream); the state crosses
between the two as a flat list of tensors, time-major ((batch, samples, channels), the kernel's
layout), in layer order:

- stride-1 conv: its kept inputs (B, context, Cin)
- transposed conv: its overlapping tail (B, k - stride, Cout)
- LSTM: h and c (layers, B, C)
- residual block: each conv's kept inputs, the shortcut conv's, then the delayed skip (B, lag, C)

Arithmetic: the convolutions in float32 (the k taps' windows side by side, one GEMM), the LSTM's
and the transposed convolutions' matrices at the codec's precision; int8 goes through fbgemm with
each row scaled on its own, as `Int8Linear` does for the Python decoder. So the compiled and the
Python decoders agree to float rounding at either precision, and a stream's samples do not depend
on what shares its batch (`tests/engine/test_codec_step.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .codec_layers import (
    ELU,
    ConvState,
    ConvTransposeState,
    LSTMState,
    ResState,
    StreamConv1d,
    StreamConvTranspose1d,
    StreamLSTM,
    StreamResBlock,
)
from .cpu_kernels import kernels
from .errors import UserError


class CodecStream(Protocol):
    """`kernels.CodecStream`: one stream's layers in steady state."""

    def push(self, codes: torch.Tensor) -> torch.Tensor: ...  # (B, K, T) -> (B, channels, T * hop)

    def state(self) -> list[torch.Tensor]: ...


def cache_codec_kernels(precision: str, device: torch.device, say: Callable[[str], None] | None = None) -> None:
    """Build (once) or load the kernel an int8 codec on the CPU plays through (`Codec(compiled=
    None)`), with a word on the console; where it cannot be built, say that the Python decoder
    (~2x slower a frame) plays instead."""
    if precision != "int8" or device.type != "cpu":
        return
    try:
        kernels(say, "the compiled codec")
    except UserError as e:
        if say is not None:
            say(f"{e}; the Python codec plays instead (about 2x slower a frame)")


def _rows(x: torch.Tensor | None) -> torch.Tensor:
    """(B, C, n) <-> (B, n, C); a state is exported only once `steady` holds (no None in it)."""
    assert x is not None, "a layer's state was exported before its warm-up ended"
    return x.transpose(1, 2).contiguous()


# -- each layer kind: how the kernel takes it, when it is steady, its state both ways -----------


@dataclass(frozen=True)
class _Kind:
    describe: Callable[[Any], tuple[Any, ...]]  # layer -> the kernel's tuple (its matrices as built)
    steady: Callable[[Any, Any], bool]  # (layer, state): past its warm-up
    export: Callable[[Any, Any], list[torch.Tensor]]  # (layer, state) -> its part of the flat list
    restore: Callable[[Any, Iterator[torch.Tensor]], Any]  # (layer, the flat list) -> its state


def _conv(c: StreamConv1d) -> tuple[Any, ...]:
    taps = c.weight.permute(2, 1, 0).contiguous()  # (k, Cin, Cout)
    return ("conv", taps, c.bias.contiguous(), c.dilation, c.context)


def _conv_steady(c: StreamConv1d, st: ConvState) -> bool:
    return st.started and st.buf is not None and st.buf.shape[-1] == c.context


def _conv_restore(_c: StreamConv1d, it: Iterator[torch.Tensor]) -> ConvState:
    return ConvState(buf=_rows(next(it)), started=True)


def _convt(c: StreamConvTranspose1d) -> tuple[Any, ...]:
    if c.mul is None:
        raise TypeError("the compiled codec needs a transposed conv's kernel to be a multiple of its stride")
    cin, cout, k = c.weight.shape  # the matrix's rows are ordered (tap, Cout)
    return ("convt", c.mul.kernel_form(), c.bias.contiguous(), c.stride, k, cin, cout)


def _lstm(layer: StreamLSTM) -> tuple[Any, ...]:
    return ("lstm", [m.kernel_form() for m in layer.cat], layer.bias, layer.lstm.hidden_size)


def _res_lag(block: StreamResBlock) -> int:
    """Samples the skip path waits for the conv path: their lookaheads' difference."""
    ahead = sum(c.lookahead for c in block.convs)
    return ahead - (block.shortcut.lookahead if block.shortcut else 0)


def _res(block: StreamResBlock) -> tuple[Any, ...]:
    shortcut = [_conv(block.shortcut)] if block.shortcut else []
    dim = block.convs[-1].weight.shape[0]
    return ("res", [_conv(c) for c in block.convs], shortcut, _res_lag(block), dim)


def _res_convs(block: StreamResBlock, st: ResState) -> list[tuple[StreamConv1d, ConvState]]:
    pairs = list(zip(block.convs, st.block))
    return pairs + ([(block.shortcut, st.shortcut)] if block.shortcut and st.shortcut else [])


def _res_steady(block: StreamResBlock, st: ResState) -> bool:
    lag_full = st.pending is not None and st.pending.shape[-1] == _res_lag(block)
    return lag_full and all(_conv_steady(c, s) for c, s in _res_convs(block, st))


def _res_export(block: StreamResBlock, st: ResState) -> list[torch.Tensor]:
    return [_rows(s.buf) for _, s in _res_convs(block, st)] + [_rows(st.pending)]


def _res_restore(block: StreamResBlock, it: Iterator[torch.Tensor]) -> ResState:
    convs = [_conv_restore(c, it) for c in block.convs]
    shortcut = _conv_restore(block.shortcut, it) if block.shortcut else None
    return ResState(block=convs, shortcut=shortcut, pending=_rows(next(it)))


_KINDS: dict[type, _Kind] = {
    StreamConv1d: _Kind(_conv, _conv_steady, lambda c, st: [_rows(st.buf)], _conv_restore),
    StreamConvTranspose1d: _Kind(
        _convt,
        lambda c, st: st.tail is not None and not st.to_trim,
        lambda c, st: [_rows(st.tail)],
        lambda c, it: ConvTransposeState(tail=_rows(next(it)), to_trim=0),
    ),
    StreamLSTM: _Kind(
        _lstm,
        lambda c, st: st.h is not None,
        lambda c, st: [st.h.contiguous(), st.c.contiguous()],
        lambda c, it: LSTMState(h=next(it), c=next(it)),
    ),
    ELU: _Kind(lambda c: ("elu",), lambda c, st: True, lambda c, st: [], lambda c, it: None),
    StreamResBlock: _Kind(_res, _res_steady, _res_export, _res_restore),
}


def _kind(layer: Any) -> _Kind:
    kind = _KINDS.get(type(layer))
    if kind is None:
        raise TypeError(f"the compiled codec has no {type(layer).__name__}")
    return kind


def describe(layers: list[Any]) -> list[tuple[Any, ...]]:
    """The decoder's layers as `kernels.CodecStep` takes them (see `kernels/codec_step.cpp`)."""
    return [_kind(layer).describe(layer) for layer in layers]


def steady(layers: list[Any], states: list[Any]) -> bool:
    """Whether every layer has left its warm-up: a push of n samples gives a fixed number out."""
    return all(_kind(layer).steady(layer, st) for layer, st in zip(layers, states))


def export(layers: list[Any], states: list[Any]) -> list[torch.Tensor]:
    """The Python layers' steady state as the kernel's flat list (module docstring)."""
    return [t for layer, st in zip(layers, states) for t in _kind(layer).export(layer, st)]


def restore(layers: list[Any], flat: list[torch.Tensor]) -> list[Any]:
    """`export` undone: the Python layers' states from the kernel's flat list."""
    it = iter(flat)
    return [_kind(layer).restore(layer, it) for layer in layers]


class CompiledCodec:
    """The kernel's immutable half (weights, layer plan) for one codec; `start` makes streams."""

    def __init__(self, layers: list[Any], codebooks: list[torch.Tensor]) -> None:
        self.layers = layers
        self.step = kernels(need="the compiled codec").CodecStep(
            describe(layers), torch.stack([b.float() for b in codebooks]).contiguous()
        )

    def start(self, states: list[Any], batch: int) -> CodecStream:
        """A compiled stream carrying on from the Python layers' steady `states`."""
        stream: CodecStream = self.step.stream(export(self.layers, states), batch)
        return stream

    def stop(self, stream: CodecStream) -> list[Any]:
        """The Python layers' states where the compiled stream stands (for the flush)."""
        return restore(self.layers, stream.state())
