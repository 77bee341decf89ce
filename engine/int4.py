"""4-bit weights for the live path: the format, its arithmetic in plain PyTorch, and the multiply.

A live step is a few rows times every weight matrix, so it costs what its weights weigh. int8
(fbgemm) reads ~310 MB a guided musicgen-small step; blocks of 32 weights at 4 bits with one
scale per block (4.625 bits a weight, the shape of ggml's Q4_K) read 0.58x that.

The format: blocks of 32 weights; a block's ideal scale is its largest-magnitude weight / -8 (so
that weight is -8 steps), stored as an integer (|sc| <= 16383) times a float per superblock of 8
blocks: a block 100x quieter than its superblock's loudest keeps its scale within 0.3 %. Weights
round (to nearest even) into [-8, 7] at the stored scale and are kept + 8 as nibbles, blocks in
pairs: byte j of a pair holds weight j of the first block (low nibble) and of the second (high
nibble), so one 32-byte load serves two blocks. A width that is not a multiple of 64 is padded with
zero weights. 4.625 bits a weight in all.

The multiply (`kernels/int4_linear.cpp`): each row of x is quantized once per call to int8 with a
scale per superblock (amax x (1/127), rounded to nearest even); a superblock's sum of (block scale x
block dot product) is an exact integer, scaled by (superblock scale x row scale) and summed in
float32. No scale is shared between rows, so a row's result never depends on the other rows
(batch-invariant by construction; `independent_rows` costs nothing here). `reference_linear` is the
same arithmetic in PyTorch: the kernel equals it within float32 rounding (`term_magnitude`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_kernels import kernels
from .errors import UserError

QK = 32  # weights per block
SB = 8  # blocks per superblock
SC_MAX = 16383  # the largest integer block scale (8 blocks' int32 lanes stay below 2^31: the kernel's doc)
INV127 = torch.tensor(1.0 / 127.0, dtype=torch.float32)  # one float32 multiply, as the kernel's
ISAS = {"auto": 0, "scalar": 1, "avx2": 2}  # int4_linear's `isa` argument


def blocks(k: int) -> int:
    """Blocks of 32 in a width of k columns, in whole pairs (k zero-padded to a multiple of 64)."""
    return 2 * ((k + 2 * QK - 1) // (2 * QK))


def _superblocks(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """(..., nb) -> (..., ns, 8), the last superblock padded with `fill`."""
    nb = t.shape[-1]
    ns = (nb + SB - 1) // SB
    return F.pad(t, (0, ns * SB - nb), value=fill).view(*t.shape[:-1], ns, SB)


def quantize_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) float -> qs (N, nb / 2, 32) uint8 (a pair of blocks: the first's weights in the low
    nibbles, the second's in the high ones, + 8), sc (N, nb) int16 (the
    blocks' integer scales), ds (N, ns) float32 (the superblocks' scales). `weight_sums` gives
    the kernel's fourth tensor."""
    w = w.detach().float().cpu()
    n, k = w.shape
    nb = blocks(k)
    wb = F.pad(w, (0, nb * QK - k)).view(n, nb, QK)
    peak = wb.gather(2, wb.abs().argmax(dim=2, keepdim=True)).squeeze(2)  # signed, largest |w|
    block = peak / -8  # the block's ideal scale: its peak is exactly -8 steps
    top = _superblocks(block.abs()).amax(dim=2)  # (N, ns)
    ds = top / SC_MAX
    inv = torch.where(ds != 0, 1 / ds, torch.zeros_like(ds))
    sc = (_superblocks(block) * inv.unsqueeze(2)).round().clamp(-SC_MAX, SC_MAX).flatten(1)[:, :nb]
    scale = sc * ds.repeat_interleave(SB, dim=1)[:, :nb]  # what the format stores
    step = torch.where(scale != 0, 1 / scale, torch.zeros_like(scale))
    q = ((wb * step.unsqueeze(2)).round().clamp(-8, 7).to(torch.int16) + 8).view(n, nb // 2, 2, QK)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).to(torch.uint8)
    return qs.contiguous(), sc.to(torch.int16).contiguous(), ds.contiguous()


def weight_sums(qs: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
    """(N, ns) int32: each superblock's sum of (block scale x sum of the block's weight steps); the
    kernel feeds its rows in + 128 and takes 128 x this off (|this| <= 8 x 16383 x 256 < 2^31)."""
    sums = unpack_weights(qs).to(torch.int64).sum(dim=2) * sc.to(torch.int64)  # (N, nb)
    return _superblocks(sums).sum(dim=2).to(torch.int32).contiguous()


def unpack_weights(qs: torch.Tensor) -> torch.Tensor:
    """qs (N, nb / 2, 32) -> the weights' steps (N, nb, 32) int8 in [-8, 7]."""
    q = qs.to(torch.int16)
    return (torch.stack([q & 0x0F, q >> 4], dim=2) - 8).to(torch.int8).flatten(1, 2)


def dequantize(qs: torch.Tensor, sc: torch.Tensor, ds: torch.Tensor, k: int) -> torch.Tensor:
    """The weights the format stores, (N, k) float32."""
    nb = sc.shape[1]
    scale = sc.float() * ds.repeat_interleave(SB, dim=1)[:, :nb]
    w = unpack_weights(qs).float() * scale.unsqueeze(2)
    return w.reshape(qs.shape[0], -1)[:, :k]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float32 -> its int8 blocks (M, nb * 32) and superblock scales (M, ns), as the
    kernel makes them."""
    m, k = x.shape
    nb = blocks(k)
    ns = (nb + SB - 1) // SB
    xs = F.pad(x.float(), (0, ns * SB * QK - k)).view(m, ns, SB * QK)
    d = xs.abs().amax(dim=2) * INV127
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = (xs * inv.unsqueeze(2)).round().to(torch.int8)
    return q.reshape(m, ns * SB * QK)[:, : nb * QK].contiguous(), d


def reference_linear(x: torch.Tensor, qs: torch.Tensor, sc: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in plain PyTorch: x (M, K) @ W.T -> (M, N). Integers exact (float64),
    each superblock's integer scaled by (ds x row scale) in float32, as the kernel does."""
    m = x.shape[0]
    xq, xs = quantize_rows(x)
    nb = sc.shape[1]
    wq = unpack_weights(qs).double()
    dots = torch.einsum("mbk,nbk->mnb", xq.view(m, nb, QK).double(), wq) * sc.double().unsqueeze(0)  # (M, N, nb)
    ints = _superblocks(dots).sum(dim=3)  # (M, N, ns), exact
    scale = ds.unsqueeze(0) * xs.unsqueeze(1)  # float32 products, as the kernel's
    return (ints * scale.double()).sum(dim=2).float()


def term_magnitude(x: torch.Tensor, qs: torch.Tensor, sc: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """(M, N): the sum of |terms| the kernel adds in float32 (its rows go in + 128), which bounds
    its rounding: |kernel - reference| <= a few float32 epsilons times this."""
    m = x.shape[0]
    xq, xs = quantize_rows(x)
    nb = sc.shape[1]
    w = unpack_weights(qs).double().abs()
    dots = torch.einsum("mbk,nbk->mnb", xq.view(m, nb, QK).double().abs() + 128, w) * sc.double().abs().unsqueeze(0)
    return (_superblocks(dots).sum(dim=3) * (ds.unsqueeze(0) * xs.unsqueeze(1)).double()).sum(dim=2)


class Int4Linear:
    """4-bit blocks through `kernels/int4_linear.cpp` (the `engine.linear.Linear` protocol)."""

    def __init__(self, w: torch.Tensor, isa: str = "auto") -> None:
        self.out_features, self.in_features = w.shape
        self.qs, self.sc, self.ds = quantize_weights(w)
        self.wc = weight_sums(self.qs, self.sc)
        self.nbytes = self.qs.numel() + 2 * self.sc.numel() + 8 * self.ds.numel()
        self.isa = ISAS[isa]
        self._mul = kernels(need="int4 weights").int4_linear

    def __call__(self, x: torch.Tensor, independent_rows: bool = False) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32:
            flat = flat.float()
        y = self._mul(flat, self.qs, self.sc, self.ds, self.wc, self.isa)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def check_int4(device: torch.device) -> None:
    """One sentence for a machine that cannot multiply 4-bit weights (a GPU; no compiler)."""
    if device.type != "cpu":
        raise UserError("int4 weights run on the CPU only (our kernel); on a GPU use float16 or bfloat16")
    kernels(need="int4 weights")
