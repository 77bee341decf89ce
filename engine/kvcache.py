"""The caches a stream's decoder reads (`KVCache` for self-attention, `CrossKV` for a condition,
`PrefixKV` for a melody or style prefix), and how the self-attention one is stored: float32, or
float16 / int8 read by our kernels.

Late in a 30 s window a musicgen-small step reads ~0.4 GB of cached keys and values (24 layers, two
CFG rows, ~1 000 columns, fp32) - more than its int8 weights. float16 halves those bytes. torch's CPU
attention gains nothing from it (it converts more slowly than it reads), so float16 caches are read
by `kernels/decode_attention.cpp`, which converts in registers and accumulates in float32
(`engine.cpu_kernels` builds it for this machine the first time it is needed).

int8 (`kernels/kv8_attention.cpp`) halves the bytes again: a head's key (or value) at one column is
64 int8 values and one float32 scale (max |x| / 127), written by `quantize` and read by
`decode_attention_q8`, which scales in registers and accumulates in float32.

What they cost in fidelity: each cached key and value rounded to float16 (about 3 decimal digits),
or to 255 levels of its own vector's range; `musicgen-live bench --kv float16|int8 --quality`
measures it against float32. The exact path keeps float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cpu_kernels import kernels
from .errors import UserError

KV_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}

# q (R, H, T, d) fp32, k / v float16 views, start column, scale -> (R, H, T, d) fp32
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def check_kv(kv: str, device: torch.device, exact: bool = False) -> None:
    """One clear sentence for a cache type this device or kernel choice cannot run."""
    if kv not in KV_DTYPES:
        raise UserError(f"unknown KV cache type '{kv}' (choose one of {', '.join(KV_DTYPES)})")
    if kv == "float32":
        return
    if exact:
        raise UserError("the exact (parity) kernels keep the KV cache in float32")
    if device.type != "cpu":
        raise UserError(f"{_named(kv)} is read by a CPU kernel; on {device.type} keep kv float32")


def attention_kernel(say: Callable[[str], None] | None = None) -> AttentionKernel:
    """The compiled float16-cache attention (built on first use, then loaded from torch's cache)."""
    fn: AttentionKernel = kernels(say, "a float16 KV cache").decode_attention
    return fn


def _named(kv: str) -> str:
    return f"{'an' if kv == 'int8' else 'a'} {kv} KV cache"


def cache_kernels(kv: str, say: Callable[[str], None] | None = None) -> None:
    """Build (once) or load the kernels a cache type reads with, with a word on the console."""
    if kv != "float32":
        kernels(say, _named(kv))


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) float32 -> its int8 values (..., d) and a float32 scale per vector (...): the
    8-bit cache's format, by the kernel the compiled step uses too."""
    q, s = kernels(need="an int8 KV cache").kv_quantize(x.float())
    return q, s


def reference_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize` in plain PyTorch (its test's reference)."""
    s = x.float().abs().amax(dim=-1) / 127
    inv = torch.where(s != 0, 1 / s, torch.zeros_like(s))
    return (x.float() * inv.unsqueeze(-1)).round().to(torch.int8), s


# q (R, H, T, d) fp32, k int8, k scales, v int8, v scales, start column, scale -> (R, H, T, d) fp32
Attention8Kernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor
]


def attention8_kernel(say: Callable[[str], None] | None = None) -> Attention8Kernel:
    """The compiled int8-cache attention."""
    fn: Attention8Kernel = kernels(say, "an int8 KV cache").decode_attention_q8
    return fn


# -- the caches a stream's decoder reads: self-attention, cross-attention, a prefix --------------


@dataclass
class KVCache:
    """Self-attention keys/values for `batch` rows and `capacity` columns, allocated once.

    `k[i]` / `v[i]` are layer i's (batch, H, capacity, d) buffers. Column t of the stream lives at
    slot t; nothing is ever appended or reallocated. An int8 cache (`engine.kvcache`) keeps a float32
    scale per head vector in `k_scale[i]` / `v_scale[i]` (batch, H, capacity); writes go through
    `write`, which quantizes.
    """

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def rows(self, first: int, end: int) -> KVCache:
        """A view of rows first..end-1 (writes land in this cache): one pass of two-step guidance."""
        if self.k_scale is None or self.v_scale is None:
            return KVCache(k=self.k[:, first:end], v=self.v[:, first:end])
        return KVCache(
            self.k[:, first:end], self.v[:, first:end], self.k_scale[:, first:end], self.v_scale[:, first:end]
        )

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys and values (n, H, T, d) into rows 0..n-1, columns start..start+T-1 of `layer`."""
        n, end = k.shape[0], start + k.shape[2]
        if self.k_scale is None or self.v_scale is None:
            self.k[layer][:n, :, start:end] = k
            self.v[layer][:n, :, start:end] = v
            return
        for values, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = quantize(x)
            values[layer][:n, :, start:end] = q
            scales[layer][:n, :, start:end] = s

    def rearrange_rows(self, rows: list[int], filled: int) -> None:
        """Row r becomes old row rows[r], over the first `filled` columns (a prompt row added by
        copying another's history, rows dropped after a crossfade)."""
        moves = {dst: src for dst, src in enumerate(rows) if dst != src}  # rows in place are not touched
        scales = [t for t in (self.k_scale, self.v_scale) if t is not None]
        for buf in (self.k, self.v, *scales):  # (layers, batch, H, capacity[, d]): rows are dim 1
            pending = dict(moves)
            while pending:
                # a row is overwritten only once no pending move still reads it: one copy each, no temporary
                ready = [d for d in pending if d not in pending.values()]
                if not ready:  # rows trading places: through a temporary of just those rows
                    dst = list(pending)
                    src = torch.tensor([pending[d] for d in dst], device=buf.device)
                    buf[:, dst, :, :filled] = buf[:, src, :, :filled]
                    break
                for d in ready:
                    buf[:, d, :, :filled].copy_(buf[:, pending.pop(d), :, :filled])


@dataclass
class CrossKV:
    """Cross-attention keys/values of the conditional rows, computed once per condition.

    `k` / `v`: (layers, n_cond, H, S, d). Unconditional rows have none: their cross-attention
    output is exactly zero (null condition, all-zero mask), so it is skipped, not computed.
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def rows(self) -> int:
        return self.k.shape[1]


@dataclass
class PrefixKV:
    """A prefix-conditioned (MusicGen-Melody) stream's conditioning as its decoder sees it: the
    projected prefix states (rows, L, D) - conditional rows first, then the unconditional one -
    that precede the codes in the sequence. The stream's first forward (`forward_prefixed`) puts
    their keys/values in the first L slots of its KV cache; later columns sit after them
    (`Segment.offset`)."""

    states: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.states.shape[1])
