"""How the live (fast) path multiplies by a weight matrix: fp32, half precision, or int8.

A decoder step on CPU is a handful of rows times every weight matrix, so it is bound by how many
bytes of weights it reads (~21 GB/s for an fp32 GEMV on the 2-core CPU, BENCHMARKS.md). Storing the
matrices smaller is how a step gets past the fp32 floor. The parity path (`LanguageModel(exact=True)`)
never comes here: it stays fp32 with the reference's matmul shapes.

Precisions (measured on the 2-core EPYC, GB/s of fp32-equivalent weights per second, see
BENCHMARKS.md): float32 ~21 (MKL, `linear_skinny`); float16 / bfloat16 ~40-45 for one row but ~20
for the CFG pair (MKL's half GEMM does not reuse the weights across rows); int8 ~105 for 1-4 rows
(fbgemm); int4 (`engine.int4`, our kernel) reads 4.5 bits a weight.

The int8 path is fbgemm's dynamically quantised GEMM: weights int8 per output channel (symmetric),
activations quantised to 7 bits on the fly (reduce_range, so AVX2's 16-bit pair sums cannot
saturate), int32 accumulation. fbgemm picks one activation scale for the whole input, so one row's
result depends on the others. A batch of streams asks for `independent_rows`: every row is scaled
to max-abs 1 first and an anchor row pins the range to [-1, 1]; with the quantisation fixed per row
and integer accumulation exact, a row's output is then bit-identical in any batch (a stream sounds
the same whoever shares its batch). Those extra small ops cost ~90 us a call (~13 ms a step for
musicgen-small), which is why a single stream does without. Weight-only int8
(`torch._weight_int8pack_mm`) keeps fp32 activations but runs at 4-8 GB/s here, slower than fp32,
so it is not offered.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
import torch.nn.functional as F

from .errors import UserError
from .int4 import Int4Linear, check_int4

PRECISIONS = ("float32", "bfloat16", "float16", "int8", "int4")
SKINNY_MIN_IN = 512  # input width from which `linear_skinny` beats F.linear for a few rows (measured)
_HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class Linear(Protocol):
    """x (..., in) -> x @ W.T (..., out), in x's dtype. With `independent_rows` a row's result must
    not depend on the values of the other rows (for a fixed row count)."""

    nbytes: int

    def __call__(self, x: torch.Tensor, independent_rows: bool = False) -> torch.Tensor: ...


def linear_skinny(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T for a handful of rows, computed as W @ x.T.

    MKL runs (N x D) @ (D x M) near memory bandwidth (~20 GB/s here) when x is row-major, while
    `F.linear` with M = 2 (the CFG pair) reads the weights twice (~9 GB/s), and a column-major x
    falls to ~6 GB/s: hence the explicit `.contiguous()` on the way in. The result is made
    row-major on the way out too (M x N floats, nothing next to W): a strided Q would send SDPA
    to its slow math path, and the next layer's input would be column-major again.
    """
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > 8 or x.device.type != "cpu":
        return F.linear(x, w)
    return (w @ flat.contiguous().t()).t().contiguous().reshape(*x.shape[:-1], w.shape[0])


class DenseLinear:
    """fp32 or half-precision weights; x is cast to the weights' dtype and the result back."""

    def __init__(self, w: torch.Tensor, dtype: torch.dtype) -> None:
        self.w = w.to(dtype).contiguous()
        self.nbytes = self.w.numel() * self.w.element_size()
        # `linear_skinny` pays off where the reduction is long (musicgen-small's 1024 and up:
        # 1.2-1.5x); for narrow matrices its extra layout ops cost more than they save (tiny's
        # 64-wide layers: 23 us against 9 for F.linear; its 8192 x 64 heads: 183 against 128).
        self.mul = linear_skinny if self.w.shape[1] >= SKINNY_MIN_IN else F.linear

    def __call__(self, x: torch.Tensor, independent_rows: bool = False) -> torch.Tensor:
        # a dense GEMM's rows are independent for a fixed shape already
        if x.dtype == self.w.dtype:
            return self.mul(x, self.w)
        return self.mul(x.to(self.w.dtype), self.w).to(x.dtype)


class Int8Linear:
    """Per-channel int8 weights through fbgemm; rows made batch-independent on request (module doc)."""

    def __init__(self, w: torch.Tensor) -> None:
        w = w.detach().float().cpu()
        self.out_features, self.in_features = w.shape
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # the qint8 tensor is only the packing's input
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qw, None)
        self.nbytes = w.numel() + 4 * self.out_features
        self.anchor = torch.zeros(1, self.in_features)
        self.anchor[0, 0], self.anchor[0, -1] = -1.0, 1.0

    def __call__(self, x: torch.Tensor, independent_rows: bool = False) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if not independent_rows:
            y = torch.ops.quantized.linear_dynamic(flat, self.packed, True)
            return y.reshape(*x.shape[:-1], self.out_features)
        s = torch.linalg.vector_norm(flat, float("inf"), dim=1, keepdim=True).clamp_min_(1e-30)  # zero rows stay 0
        y = torch.ops.quantized.linear_dynamic(torch.cat([flat / s, self.anchor]), self.packed, True)
        return (y[:-1] * s).reshape(*x.shape[:-1], self.out_features)


def check_precision(precision: str, device: torch.device, exact: bool = False) -> None:
    """One clear sentence for a precision this build, device or kernel choice cannot run."""
    if exact and precision != "float32":
        raise UserError(f"the exact (parity) kernels run in float32 only, not {precision}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (choose one of {', '.join(PRECISIONS)})")
    if precision == "int4":
        check_int4(device)
    if precision == "int8":
        if device.type != "cpu":
            raise UserError("int8 weights run on the CPU only (fbgemm); on a GPU use float16 or bfloat16")
        engines = torch.backends.quantized.supported_engines
        if not {"fbgemm", "x86"} & set(engines):
            raise UserError(f"this PyTorch build has no fbgemm int8 kernels (engines: {', '.join(engines)})")


def make_linear(w: torch.Tensor, precision: str) -> Linear:
    """The live-path multiply for weight `w` (out, in) at `precision` (one of PRECISIONS)."""
    if precision == "int8":
        return Int8Linear(w)
    if precision == "int4":
        return Int4Linear(w)
    return DenseLinear(w, _HALF.get(precision, torch.float32))
