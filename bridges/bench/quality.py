"""What a reduced precision, or a shorter live window, does to the model's predictions.

Both models read the same token sequence (float32's own greedy codes, teacher-forced), so every
column compares like with like: the guided next-token distribution of each codebook under the
reduced precision against float32's. Reported, not asserted (issue 6): the share of greedy
(argmax) tokens that agree, the KL divergence KL(p_fp32 || p_reduced) in nats (mean, p99, max), and
how many frames a free-running greedy stream plays before its first differing token.

Random checkpoints have flatter distributions than trained ones (many near-ties), so argmax
agreement here is a pessimistic figure; the KL is the better guide.

`with_outlier_channels` gives a random checkpoint the outlier structure of trained transformers (a
few hidden channels tens of times louder than the rest, entering every matrix), which is what breaks
naive 4-bit and per-tensor int8; the float model is unchanged by it.

`compare_windows` does the same for the live window (`[stream] window_s` / `context_s`, a speed
setting: a shorter window reads fewer cached keys a step) against one window holding every frame.
On a random checkpoint the sinusoidal positions dominate the hidden states, so the positions a
slide renumbers move its predictions more than a trained model's: the figure means most on a real
checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from musicgen_live.engine.checkpoint import Checkpoint
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.kvcache import KVCache
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams, guide
from musicgen_live.engine.stats import percentile

_DECODER = "decoder.model.decoder."
# each layer norm of a decoder layer, and the matrices that read its output (their input columns)
_NORM_READERS = {
    "self_attn_layer_norm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "encoder_attn_layer_norm": ("encoder_attn.q_proj",),
    "final_layer_norm": ("fc1",),
}


def with_outlier_channels(ckpt: Checkpoint, channels: int = 4, factor: float = 30.0, seed: int = 0) -> Checkpoint:
    """A copy of `ckpt` whose decoder carries `channels` outlier channels per layer norm: the norm's
    weight and bias `factor` x larger there, the columns of the matrices reading it `factor` x
    smaller - the same function in exact arithmetic, but activations with a few channels `factor` x
    louder than the rest and weight rows with a few near-silent columns, as trained models have."""
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(ckpt.tensors)
    hidden = ckpt.spec.lm.hidden

    def scale(norm: str, readers: list[str]) -> None:
        if f"{norm}.weight" not in tensors:
            return  # a decoder without this norm (a melody checkpoint has no cross-attention)
        picked = torch.randperm(hidden, generator=gen)[:channels]
        for part in ("weight", "bias"):
            t = tensors[f"{norm}.{part}"].clone()
            t[picked] *= factor
            tensors[f"{norm}.{part}"] = t
        for r in readers:
            w = tensors[r].clone()
            w[:, picked] /= factor
            tensors[r] = w

    for layer in range(ckpt.spec.lm.layers):
        at = f"{_DECODER}layers.{layer}."
        for norm, readers in _NORM_READERS.items():
            scale(at + norm, [f"{at}{r}.weight" for r in readers])
    heads = sorted(k for k in tensors if k.startswith("decoder.lm_heads.") and k.endswith(".weight"))
    scale(f"{_DECODER}layer_norm", heads)
    return replace(ckpt, tensors=tensors)


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
        g = StreamGenerator(m, params)
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


@dataclass
class WindowQuality:
    """What a live window of `window_s` that keeps `context_s` when it slides does to the
    predictions, against one window holding every frame (`frames` of them)."""

    window_s: float
    context_s: float
    frames: int  # frames compared; the reference holds them all in one window
    slides: int
    columns: int  # columns compared after the first slide (before it both read the same history)
    top1_agreement: float
    kl_mean: float  # nats, KL(p_reference || p_window)
    kl_p99: float
    kl_max: float
    kl_before: float  # largest KL before the first slide, where both read the same history: 0 if sound


def check_windows(model: MusicGen, windows: list[tuple[int, int]], frames: int) -> None:
    """One sentence for a comparison that cannot run (`compare_windows`' arguments, in frames)."""
    if model.spec.lm.prefix_conditioned:
        raise ContextError("the window comparison runs on text (cross-attention) checkpoints, not melody or style ones")
    if not 1 <= frames <= model.max_frames:
        raise ContextError(f"the reference window must hold 1..{model.max_frames} frames, not {frames}")
    rate = model.spec.frame_rate
    for window, context in windows:
        if not 0 < context < window - 1:
            raise ContextError(
                f"a {window / rate:g} s window must keep less context than it holds, not {context / rate:g} s"
            )
        if window >= frames:
            raise ContextError(
                f"a {window / rate:g} s window does not slide within the {frames / rate:g} s compared: "
                "compare windows shorter than the reference"
            )


@torch.no_grad()
def compare_windows(
    model: MusicGen,
    prompt: str,
    windows: list[tuple[int, int]],
    frames: int,
    cfg: float = 3.0,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
) -> list[WindowQuality]:
    """Teacher-forced comparison of live windows (window, context), in frames, against one window
    of `frames`.

    The codes are one sampled run of `frames` frames (MusicGen's default sampling, `seed`) in a
    single window. Every window then reads the same codes: it starts as the reference does and,
    once full, slides - its cache is refilled with the last `context` complete frames at positions
    from 0, as a live slide refills it - and reads on. The guided next-token distributions of
    every column after the first slide are compared with the reference's at the same frame.
    (A live stream prefills the next window while it plays, so it swaps in with a few more frames
    than `context`; this comparison keeps exactly `context`: the slightly pessimistic case.)
    """
    check_windows(model, windows, frames)
    lm, pat = model.lm, model.pattern
    g = StreamGenerator(model, SamplingParams(cfg=cfg), seed=seed)
    cond = model.conditioner.condition(prompt, guided=True)
    g.start(cond, total_frames=frames, guided=True)
    while not g.done:
        g.step()
    codes = g.codes()
    total = pat.columns_for_frames(frames)

    def column(origin: int, first: int, count: int) -> torch.Tensor:
        cols = pat.columns(codes, 0, origin, first, count, frames)
        return cols.unsqueeze(0).expand(2, -1, -1).to(model.device)

    def logp(z: torch.Tensor) -> torch.Tensor:
        z = z.float().cpu()
        return torch.log_softmax(guide(z[0], z[1], cfg), dim=-1)  # (K, V)

    reference = lm.new_cache(2, total)
    lives = [_Live(lm.new_cache(2, pat.columns_for_frames(w)), pat.columns_for_frames(w), c) for w, c in windows]
    for c in range(total - 1):
        if say is not None and c % max(1, total // 10) == 0:
            say(f"window comparison: column {c} of {total - 1}")
        ref = logp(lm.forward(column(0, c, 1), c, reference, cond.kv))
        valid = torch.tensor([0 <= c - d < frames for d in pat.delays])  # column c + 1 predicts frame c - d_k
        for live in lives:
            if c - live.origin + 1 >= live.columns:  # full: refill with the last `context` complete frames
                live.origin = max(0, c - pat.max_delay - live.context)
                lm.forward(column(live.origin, 0, c - live.origin), 0, live.cache, cond.kv)
                live.slides += 1
            t = c - live.origin
            got = logp(lm.forward(column(live.origin, t, 1), t, live.cache, cond.kv))
            if not valid.any():
                continue
            p, q = ref[valid], got[valid]
            kl = (p.exp() * (p - q)).sum(-1)
            if live.slides:
                live.agree.append((p.argmax(-1) == q.argmax(-1)).float())
                live.kl.append(kl)
            else:
                live.before = max(live.before, float(kl.max()))
    rate = model.spec.frame_rate
    out = []
    for (w, ctx), live in zip(windows, lives):
        a = torch.cat(live.agree) if live.agree else torch.ones(0)
        k = torch.cat(live.kl).sort().values if live.kl else torch.zeros(0)
        out.append(
            WindowQuality(
                window_s=w / rate,
                context_s=ctx / rate,
                frames=frames,
                slides=live.slides,
                columns=len(live.kl),
                top1_agreement=float(a.mean()) if len(a) else 1.0,
                kl_mean=float(k.mean()) if len(k) else 0.0,
                kl_p99=percentile(k.tolist(), 0.99) or 0.0,
                kl_max=float(k[-1]) if len(k) else 0.0,
                kl_before=live.before,
            )
        )
    return out


@dataclass
class _Live:
    """One compared window's state in `compare_windows`."""

    cache: KVCache
    columns: int
    context: int
    origin: int = 0
    slides: int = 0
    before: float = 0.0
    agree: list[torch.Tensor] = field(default_factory=list)
    kl: list[torch.Tensor] = field(default_factory=list)


def format_window_quality(q: WindowQuality) -> str:
    return (
        f"  {q.window_s:g} s window, {q.context_s:g} s context: {q.slides} slides in {q.frames} frames; after the "
        f"first ({q.columns} columns) greedy tokens agree {100 * q.top1_agreement:.1f} %, KL mean {q.kl_mean:.2e} / "
        f"p99 {q.kl_p99:.2e} / max {q.kl_max:.2e} nats against one window of {q.frames} frames (before the first "
        f"slide, on the same history: KL {q.kl_before:.1e})"
    )
