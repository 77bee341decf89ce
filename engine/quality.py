"""What a reduced precision does to the model's predictions, measured against float32.

Both models read the same token sequence (float32's own greedy codes, teacher-forced), so every
column compares like with like: the guided next-token distribution of each codebook under the
reduced precision against float32's. Reported, not asserted (issue 6): the share of greedy
(argmax) tokens that agree, the KL divergence KL(p_fp32 || p_reduced) in nats (mean, p99, max), and
how many frames a free-running greedy stream plays before its first differing token.

Random checkpoints have flatter distributions than trained ones (many near-ties), so argmax
agreement here is a pessimistic figure; the KL is the better guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generator import Generator
from .model import MusicGen
from .sampling import SamplingParams, guide
from .stats import percentile


@dataclass
class Quality:
    precision: str
    frames: int
    cfg: float
    top1_agreement: float  # share of (column, codebook) greedy tokens equal to float32's
    kl_mean: float  # nats
    kl_p99: float
    kl_max: float
    first_divergence: int | None  # free-running greedy: first frame that differs (None = none did)


@torch.no_grad()
def compare_precision(reference: MusicGen, other: MusicGen, prompt: str, frames: int, cfg: float = 3.0) -> Quality:
    """Teacher-forced comparison of `other` (reduced precision) against `reference` (float32)."""
    params = SamplingParams(greedy=True, cfg=cfg)
    runs = []
    for m in (reference, other):
        g = Generator(m, params)
        g.start(m.conditioner.condition(prompt, guided=cfg != 1.0), total_frames=frames)
        while not g.done:
            g.step()
        runs.append(g.codes())
    codes = runs[0]
    differs = (runs[0] != runs[1]).any(dim=0).nonzero()
    first = int(differs[0]) if len(differs) else None

    pat = reference.pattern
    columns = pat.interleave(codes, total_frames=frames)  # (K, C) BOS / pads where nothing is held
    C = columns.shape[-1]
    guided = cfg != 1.0
    rows = 2 if guided else 1
    state = []
    for m in (reference, other):
        cond = m.conditioner.condition(prompt, guided=guided)
        state.append((m, m.lm.new_cache(rows, C), cond.kv))
    agree, kls = [], []
    for c in range(C - 1):
        tokens = columns[:, c : c + 1].unsqueeze(0).expand(rows, -1, -1)
        logp = []
        for m, cache, cross in state:
            z = m.lm.forward(tokens.to(m.device), c, cache, cross).float().cpu()
            z = guide(z[0], z[1], cfg) if guided else z[0]
            logp.append(torch.log_softmax(z, dim=-1))  # (K, V)
        # codebook k at column c + 1 predicts frame c - d_k; score only real frames
        valid = torch.tensor([0 <= c - d < frames for d in pat.delays])
        if not valid.any():
            continue
        p, q = logp[0][valid], logp[1][valid]
        agree.append((p.argmax(-1) == q.argmax(-1)).float())
        kls.append((p.exp() * (p - q)).sum(-1))
    a, k = torch.cat(agree), torch.cat(kls).sort().values
    return Quality(
        precision=other.lm.precision + ("" if other.lm.kv == "float32" else f", kv {other.lm.kv}"),
        frames=frames,
        cfg=cfg,
        top1_agreement=float(a.mean()),
        kl_mean=float(k.mean()),
        kl_p99=percentile(k.tolist(), 0.99) or 0.0,
        kl_max=float(k[-1]),
        first_divergence=first,
    )


def format_quality(q: Quality) -> str:
    div = "never" if q.first_divergence is None else f"at frame {q.first_divergence}"
    return (
        f"  quality of {q.precision} against float32 ({q.frames} frames, cfg {q.cfg:g}, teacher-forced): "
        f"greedy tokens agree {100 * q.top1_agreement:.1f} %, KL mean {q.kl_mean:.2e} / p99 {q.kl_p99:.2e} / "
        f"max {q.kl_max:.2e} nats; free-running greedy first differs {div}"
    )
