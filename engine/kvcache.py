"""How the live path stores the self-attention KV cache: float32, or float16 / int8 read by our kernels.

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

import torch

from .cpu_kernels import kernels
from .errors import EngineError

KV_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}

# q (R, H, T, d) fp32, k / v float16 views, start column, scale -> (R, H, T, d) fp32
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def check_kv(kv: str, device: torch.device, exact: bool = False) -> None:
    """One clear sentence for a cache type this device or kernel choice cannot run."""
    if kv not in KV_DTYPES:
        raise EngineError(f"unknown KV cache type '{kv}' (choose one of {', '.join(KV_DTYPES)})")
    if kv == "float32":
        return
    if exact:
        raise EngineError("the exact (parity) kernels keep the KV cache in float32")
    if device.type != "cpu":
        raise EngineError(f"{_named(kv)} is read by a CPU kernel; on {device.type} keep kv float32")


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
