"""How the live path stores the self-attention KV cache: float32, or float16 read by our own kernel.

Late in a 30 s window a musicgen-small step reads ~0.4 GB of cached keys and values (24 layers, two
CFG rows, ~1 000 columns, fp32) - more than its int8 weights. float16 halves those bytes. torch's CPU
attention gains nothing from it (it converts more slowly than it reads), so float16 caches are read
by `kernels/decode_attention.cpp`, which converts in registers and accumulates in float32
(`engine.cpu_kernels` builds it for this machine the first time it is needed).

What it costs in fidelity: each cached key and value rounded to float16 (about 3 decimal digits);
`musicgen-live bench --kv float16 --quality` measures it against float32. The exact path keeps
float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cpu_kernels import kernels
from .errors import EngineError

KV_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}

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
        raise EngineError(f"a float16 KV cache is read by a CPU kernel; on {device.type} keep kv float32")


def attention_kernel(say: Callable[[str], None] | None = None) -> AttentionKernel:
    """The compiled float16-cache attention (built on first use, then loaded from torch's cache)."""
    fn: AttentionKernel = kernels(say, "a float16 KV cache").decode_attention
    return fn
