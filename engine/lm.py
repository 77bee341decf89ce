"""The MusicGen decoder over a preallocated KV cache.

Why our own: transformers grows its cache by concatenation at every step and recomputes masks and
position lookups in Python per token. Here the cache is allocated once for the whole window, the
cross-attention keys/values are computed once per condition, and a step is a straight run of
matmuls. The numerics deliberately mirror the reference op for op (same matmul shapes, same SDPA
calls, same summation order) so greedy codes are token-exact with `transformers`.

Shapes: B = batch rows (cond rows first, then uncond rows for CFG), K = codebooks, T = columns in
this call, D = hidden, H = heads, d = head dim, S = text tokens, V = codebook size.

With int8 or int4 weights over float16 or int8 caches every fast-path forward runs the same ops in C++ in one call
(`kernels/decoder_step.cpp`): Python's per-op dispatch was a quarter of a musicgen-small step on a
2-core CPU.

One idea at ~700 lines: the decoder's forward. Its entry points (one stream, several streams'
segments in one forward, the compiled step, two-step guidance, a melody or style prefix) share
one layer loop, one cache layout and the reference's op order; split, each would repeat them.
The weights it multiplies by are picked out of a checkpoint in `engine.lm_weights`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Protocol, TypeVar, cast

import torch
import torch.nn.functional as F

from .cpu_kernels import kernels
from .int4 import Int4Linear
from .kvcache import (
    KV_DTYPES,
    Attention8Kernel,
    AttentionKernel,
    CrossKV,
    KVCache,
    PrefixKV,
    attention8_kernel,
    attention_kernel,
    check_kv,
)
from .linear import Int8Linear, Linear, check_precision, make_linear
from .lm_weights import LMWeights, sinusoidal_positions
from .pieces import run
from .spec import LMSpec

LN_EPS = 1e-5  # nn.LayerNorm's default, which MusicGen uses
CROSS_LAYERS_PER_PIECE = 4  # decoder layers whose cross-attention K/V one piece of a new prompt computes


W = TypeVar("W")


class CompiledStep(Protocol):
    """`kernels/decoder_step.cpp`'s DecoderStep: the inputs x (N, D), the segments (their
    `StepSegment`s), the conditional rows' flat ranges, the rows whose logits are wanted (None: all),
    whether rows must not depend on each other, the scale -> logits (rows, K * V)."""

    def __call__(
        self,
        x: torch.Tensor,
        segments: list[object],
        cond: list[tuple[int, int]],
        last: torch.Tensor | None,
        independent: bool,
        scale: float,
    ) -> torch.Tensor: ...


def _cross(w: W | None) -> W:
    """A cross-attention weight, which a prefix-conditioned (melody) decoder does not have."""
    if w is None:
        raise RuntimeError("this decoder is prefix-conditioned (melody): it has no cross-attention")
    return w


@dataclass
class FastLayer:
    """One layer's matrices as the live path multiplies them (`engine.linear`, any precision)."""

    qkv: Linear
    o: Linear
    cq: Linear | None  # None in a prefix-conditioned (melody) decoder
    co: Linear | None
    fc1: Linear
    fc2: Linear


@dataclass
class Segment:
    """The rows of a forward that belong to one stream: `rows` consecutive rows (conditional rows
    first, one per `CrossKV` in `conds`, then unconditional ones), each `columns` columns long at
    positions start..start+columns-1, whose keys/values live in rows 0..rows-1 of `cache`.
    `logits`: whether the caller wants the logits of its last column (a window being prefilled
    only fills its cache)."""

    rows: int
    start: int
    cache: KVCache
    conds: list[CrossKV]
    columns: int = 1
    logits: bool = True
    offset: int = 0  # cache slots (and positions) before column 0: a melody prefix's
    states: torch.Tensor | None = None  # (rows, columns, D) inputs instead of token embeddings: a melody prefix

    @property
    def tokens(self) -> int:
        return self.rows * self.columns

    @property
    def slot(self) -> int:
        """The cache slot, and sequence position, of this segment's first column."""
        return self.offset + self.start


@dataclass
class _Layout:
    """Where each segment's tokens sit in a forward's flat (N, D) activations: rows one after the
    other, each row's columns consecutive (row-major), segments in order, padding rows last."""

    offsets: list[int]
    total: int  # N, padding included
    cond: list[tuple[int, int]]  # flat ranges of the conditional rows' tokens, per segment
    last: torch.Tensor | None  # flat index of every logit row's last token (None: uniform case)


class LanguageModel:
    """Stateless compute over `LMWeights`; all per-stream state lives in `KVCache` / `CrossKV`.

    `exact=True` reproduces the reference's arithmetic: the same matmul shapes in the same order,
    heads over every prefill column. That is what the parity tests hold to. `exact=False` (live
    default) fuses Q/K/V and the heads and multiplies through `engine.linear` at `precision`
    (float32 by default; bfloat16, float16 or int8 weights trade exactness for speed).

    One forward can carry several streams (`forward_segments`): the matmuls, which read every
    weight once whatever the row count, run over all rows together; attention runs per stream over
    its own cache. Every op is row-wise except the matmuls, whose last bits depend on the row count
    (MKL picks its kernel by shape), so a batch of fixed size gives each stream the same result
    whoever else is in it.
    """

    def __init__(
        self,
        spec: LMSpec,
        weights: LMWeights,
        exact: bool = False,
        precision: str = "float32",
        two_step: bool = False,
        kv: str = "float32",
    ) -> None:
        """`two_step`: guidance as two forwards, conditional rows then unconditional ones
        (audiocraft's `two_step_cfg`), instead of one forward over both; same maths, the rounding of
        a one-row batch, twice the weight reads. `kv`: how self-attention caches are stored
        (`engine.kvcache`: float32, or float16 read by our CPU kernel)."""
        self.spec = spec
        self.w = weights
        self.exact = exact
        self.two_step = two_step
        ref = weights.ln_w
        self.device, self.dtype = ref.device, ref.dtype
        check_precision(precision, self.device, exact)
        check_kv(kv, self.device, exact)
        self.precision = precision
        self.kv = kv
        self.kv_dtype = KV_DTYPES[kv] if kv != "float32" else self.dtype
        self._attend16: AttentionKernel | None = attention_kernel() if kv == "float16" else None
        self._attend8: Attention8Kernel | None = attention8_kernel() if kv == "int8" else None
        self.positions = sinusoidal_positions(spec.max_positions, spec.hidden).to(self.device, self.dtype)
        self.scale = spec.head_dim**-0.5
        rows = weights.embed_cat.shape[0] // spec.num_codebooks  # V + 1 per codebook
        self.embed_offsets = (torch.arange(spec.num_codebooks, device=self.device) * rows).view(1, -1)
        self.fast: list[FastLayer] = []
        self.head: Linear | None = None
        if not exact:
            mk = lambda w: make_linear(w, precision)  # noqa: E731
            mk_cross = lambda w: None if w is None else make_linear(w, precision)  # noqa: E731
            self.fast = [
                FastLayer(
                    qkv=mk(lw.qkv), o=mk(lw.o), cq=mk_cross(lw.cq), co=mk_cross(lw.co), fc1=mk(lw.fc1), fc2=mk(lw.fc2)
                )
                for lw in weights.layers
            ]
            self.head = mk(weights.heads_cat)
        self._kernels: ModuleType | None = None  # the compiled kernels' module, when the step uses it
        self._step = self._compiled_step()

    def _compiled_step(self) -> CompiledStep | None:
        """The decoder's layers and heads in C++ (`kernels/decoder_step.cpp`) where the fast path
        runs int8 or int4 weights over float16 or int8 caches: the same ATen ops as `_forward` (batch-independent
        rows included), without Python between them (bit-identical logits; ~25 % off a
        musicgen-small step on 2 cores)."""
        if self.exact or self.precision not in ("int8", "int4") or self.kv not in ("float16", "int8"):
            return None
        norms: list[torch.Tensor | None] = []
        mats: list[tuple[object, ...] | None] = []
        for lw, f in zip(self.w.layers, self.fast):
            norms += [lw.sa_ln_w, lw.sa_ln_b, lw.ca_ln_w, lw.ca_ln_b, lw.ff_ln_w, lw.ff_ln_b]
            mats += [_packed(m) for m in (f.qkv, f.o, f.cq, f.co, f.fc1, f.fc2)]
        norms += [self.w.ln_w, self.w.ln_b]
        mats.append(_packed(self._head))
        self._kernels = kernels()
        step: CompiledStep = self._kernels.DecoderStep(norms, mats, self.spec.heads, LN_EPS)
        return step

    @property
    def step_weight_bytes(self) -> int:
        """Bytes of weights one guided step reads (the matrices; embeddings are lookups): twice
        the matrices with two-step guidance."""
        if self.exact:
            mats = [t for lw in self.w.layers for t in (lw.qkv, lw.o, lw.cq, lw.co, lw.fc1, lw.fc2) if t is not None]
            once = sum(t.numel() * t.element_size() for t in mats + [self.w.heads_cat])
        else:
            once = sum(m.nbytes for f in self.fast for m in vars(f).values() if m is not None) + self._head.nbytes
        return 2 * once if self.two_step else once

    # -- state ---------------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        s = self.spec
        capacity = min(capacity, s.max_positions)
        shape = (s.layers, batch, s.heads, capacity, s.head_dim)
        k, v = (torch.zeros(shape, device=self.device, dtype=self.kv_dtype) for _ in range(2))
        if self.kv != "int8":
            return KVCache(k=k, v=v)
        k_scale, v_scale = (torch.zeros(shape[:-1], device=self.device) for _ in range(2))
        return KVCache(k, v, k_scale, v_scale)

    def project_condition(self, text_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """T5 states (n, S, text_hidden) -> decoder-width states, zeroed where `mask` is 0.

        The null condition (uncond row) is zeros before the projection with an all-zero mask, so it
        projects to exact zeros; callers pass it stacked with the real rows as the reference does.
        """
        x = text_states.to(self.device, self.dtype)
        if self.w.proj_w is not None:
            x = F.linear(x, self.w.proj_w, self.w.proj_b)
        return x * mask.to(self.device)[..., None]

    def cross_kv(self, states: torch.Tensor, n_cond: int) -> CrossKV:
        """Per-layer cross-attention K/V for the first `n_cond` rows of `states` (rows, S, D)."""
        return run(self.cross_kv_steps(states, n_cond))

    @torch.no_grad()
    def cross_kv_steps(
        self, states: torch.Tensor, n_cond: int, layers_per_piece: int = CROSS_LAYERS_PER_PIECE
    ) -> Generator[None, None, CrossKV]:
        """`cross_kv`, yielding after every `layers_per_piece` layers: a live stream spreads a new
        prompt's projections over steps (all 24 layers of a small model at once cost ~2 steps' worth
        of weight reads). The same ops in the same order: the same values."""
        s = self.spec
        rows, S, _ = states.shape
        ks, vs = [], []
        for i, lw in enumerate(self.w.layers):
            k = F.linear(states, _cross(lw.ck)).view(rows, S, s.heads, s.head_dim).transpose(1, 2)
            v = F.linear(states, _cross(lw.cv)).view(rows, S, s.heads, s.head_dim).transpose(1, 2)
            ks.append(k[:n_cond])
            vs.append(v[:n_cond])
            if (i + 1) % layers_per_piece == 0 and i + 1 < len(self.w.layers):
                yield
        return CrossKV(k=torch.stack(ks), v=torch.stack(vs))

    # -- compute -------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Tokens (N, K) -> (N, D): sum of codebook embeddings, then positions. Exact mode adds
        codebook by codebook in the reference's order; the fast path does one lookup into the
        stacked tables and one sum."""
        if not self.exact:
            return F.embedding(tokens + self.embed_offsets, self.w.embed_cat).sum(dim=1) + positions
        x = F.embedding(tokens[:, 0], self.w.embed[0])
        for k in range(1, self.spec.num_codebooks):
            x = x + F.embedding(tokens[:, k], self.w.embed[k])
        return x + positions

    def forward(
        self,
        tokens: torch.Tensor,
        start: int,
        cache: KVCache,
        cross: CrossKV | list[CrossKV] | None,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Run columns `tokens` (B, K, T) at positions start..start+T-1, writing their K/V into `cache`.

        `cross` conditions the first rows, one `CrossKV` per row (a single one may be passed bare);
        the remaining rows are unconditional. Returns fp32 logits (B, K, V) for the last column. In
        exact mode the heads run over all T columns when `all_positions` is set, as the reference's
        prefill does.
        """
        conds = [] if cross is None else [cross] if isinstance(cross, CrossKV) else list(cross)
        segment = Segment(tokens.shape[0], start, cache, conds, columns=tokens.shape[-1])
        return self.forward_segments(tokens, [segment], all_positions)

    @torch.inference_mode()  # ~10 % less per-op dispatch than no_grad; writes into the (normal) caches are fine
    def forward_segments(
        self,
        tokens: torch.Tensor | list[torch.Tensor],
        segments: list[Segment],
        all_positions: bool = False,
        batched: bool = False,
    ) -> torch.Tensor:
        """`forward` for several streams (or a stream and the window it prepares) at once.

        `tokens` is either one (R, K, T) tensor - every segment `T` columns long, its rows in order
        from row 0, rows past the last segment padding (computed and ignored) - and then the
        result is the logits of all R rows (R, K, V); or a list of (rows, K, columns) tensors, one
        per segment (segments of different lengths: a live step and a prefill chunk share the
        weight reads), and then the result holds the rows of the segments that want logits, in
        order. `batched` (implied by padding) makes every row's result independent of the other
        rows' values, at some cost; otherwise the unconditional rows' cross-attention is skipped.
        """
        if self.two_step and any(0 < len(seg.conds) < seg.rows for seg in segments):
            return self._two_step(tokens, segments, all_positions, batched)
        return self._forward(tokens, segments, all_positions, batched)

    def _forward(
        self,
        tokens: torch.Tensor | list[torch.Tensor],
        segments: list[Segment],
        all_positions: bool,
        batched: bool,
    ) -> torch.Tensor:
        """One forward over all rows of `segments` (`forward_segments`)."""
        s, w, exact = self.spec, self.w, self.exact
        D = s.hidden
        uniform = isinstance(tokens, torch.Tensor)
        flat, layout = self._flatten(tokens, segments)
        x = self.embed(flat, self._positions(flat.shape[0], segments, uniform, tokens))
        for seg, o in zip(segments, layout.offsets):
            if seg.states is not None:  # a melody prefix being prefilled: its states are the inputs
                pos = self.positions[seg.slot : seg.slot + seg.columns].repeat(seg.rows, 1)
                x[o : o + seg.tokens] = seg.states.to(self.device, self.dtype).reshape(seg.tokens, D) + pos
        ind = batched or layout.total > sum(seg.tokens for seg in segments)  # rows must not see each other
        if self._step is not None and all(seg.cache.k.dtype in (torch.float16, torch.int8) for seg in segments):
            return self._compiled(x, tokens, segments, layout, ind).view(-1, s.num_codebooks, s.card)
        # prefill chunks after the first attend causally within themselves and to the whole past
        masks = [
            torch.ones(seg.columns, seg.slot + seg.columns, dtype=torch.bool, device=self.device).tril(seg.slot)
            if seg.columns > 1 and seg.slot > 0
            else None
            for seg in segments
        ]
        any_cond = any(seg.conds for seg in segments)
        lean_cross = not exact and not ind and any_cond
        for i, lw in enumerate(w.layers):
            fast = cast(FastLayer, None if exact else self.fast[i])  # read on the fast path only
            # self-attention, each segment over its own static cache
            h = F.layer_norm(x, (D,), lw.sa_ln_w, lw.sa_ln_b, LN_EPS)
            qkv = [F.linear(h, m) for m in (lw.q, lw.k, lw.v)] if exact else fast.qkv(h, ind)
            a = self._self_attention(i, qkv, segments, layout, masks)
            x = x + (F.linear(a, lw.o) if exact else fast.o(a, ind))
            # cross-attention; unconditional (and padding) rows attend to nothing: exactly zero
            if lean_cross:  # no padding, no batch: only the conditional rows need computing
                x = self._lean_cross(i, x, fast, segments, layout)
            elif any_cond:
                h = F.layer_norm(x, (D,), lw.ca_ln_w, lw.ca_ln_b, LN_EPS)
                q = F.linear(h, _cross(lw.cq)) if exact else _cross(fast.cq)(h, ind)
                a = self._cross_attention(i, q, segments, layout.offsets, layout.total)
                x = x + (F.linear(a, _cross(lw.co)) if exact else _cross(fast.co)(a, ind))
            # feed-forward
            h = F.layer_norm(x, (D,), lw.ff_ln_w, lw.ff_ln_b, LN_EPS)
            if exact:
                x = x + F.linear(F.gelu(F.linear(h, lw.fc1)), lw.fc2)
            else:
                x = x + fast.fc2(F.gelu(fast.fc1(h, ind)), ind)
        x = F.layer_norm(x, (D,), w.ln_w, w.ln_b, LN_EPS)
        if isinstance(tokens, torch.Tensor):
            R, _, T = tokens.shape
            x = x.view(R, T, D)
            if exact:
                if not all_positions:
                    x = x[:, -1:]
                logits = torch.stack([F.linear(x, head) for head in w.heads], dim=1)  # (R, K, T', V)
                return logits[:, :, -1].float()
            return self._head(x[:, -1], ind).view(R, s.num_codebooks, s.card).float()
        assert layout.last is not None  # segments of their own lengths: the logit rows are indexed
        last = x.index_select(0, layout.last)
        if exact:
            return torch.stack([F.linear(last, head) for head in w.heads], dim=1).float()
        return self._head(last, ind).view(-1, s.num_codebooks, s.card).float()

    def _compiled(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor | list[torch.Tensor],
        segments: list[Segment],
        layout: _Layout,
        independent: bool,
    ) -> torch.Tensor:
        """`_forward`'s layers and heads through the compiled step, from its inputs `x` (N, D):
        the logits (rows, K * V) of the rows a uniform call answers, or of `layout.last`."""
        assert self._step is not None and self._kernels is not None
        last = layout.last
        if isinstance(tokens, torch.Tensor) and tokens.shape[-1] > 1:  # a uniform prefill: each row's last column
            R, _, T = tokens.shape
            last = torch.arange(T - 1, R * T, T, device=self.device)
        step_segment = self._kernels.StepSegment
        parts = [
            step_segment(
                o,
                seg.rows,
                seg.columns,
                seg.slot,
                seg.cache.k,
                seg.cache.v,
                seg.cache.k_scale,
                seg.cache.v_scale,
                *_cross_lists(seg.conds),
            )
            for seg, o in zip(segments, layout.offsets)
        ]
        return self._step(x, parts, layout.cond, last, independent, self.scale)

    def _two_step(
        self,
        tokens: torch.Tensor | list[torch.Tensor],
        segments: list[Segment],
        all_positions: bool,
        batched: bool,
    ) -> torch.Tensor:
        """`forward_segments` as two forwards: every segment's conditional rows, then its
        unconditional rows, each over its own rows of the segment's cache. Logits come back in the
        order one forward gives them (padding rows of a uniform call: zeros). A uniform call's
        passes keep its row count (`engine.batch`: fixed shapes keep a stream's bits whoever shares
        its batch)."""
        uniform = isinstance(tokens, torch.Tensor)
        per_segment: list[torch.Tensor]
        if isinstance(tokens, torch.Tensor):  # a uniform forward answers every row: all want logits
            starts = [sum(seg.rows for seg in segments[:i]) for i in range(len(segments))]
            per_segment = [tokens[a : a + seg.rows] for a, seg in zip(starts, segments)]
            segments = [replace(seg, logits=True) for seg in segments]
        else:
            per_segment = list(tokens)
        passes: tuple[list[tuple[torch.Tensor, Segment]], ...] = ([], [])
        for t, seg in zip(per_segment, segments):
            n = len(seg.conds)
            for which, (first, end) in enumerate(((0, n), (n, seg.rows))):
                if end > first:
                    states = None if seg.states is None else seg.states[first:end]
                    part = replace(seg, rows=end - first, cache=seg.cache.rows(first, end), states=states)
                    passes[which].append((t[first:end], part if which == 0 else replace(part, conds=[])))
        results: list[torch.Tensor | None] = []
        for p in passes:
            parts, segs = [t for t, _ in p], [seg for _, seg in p]
            if not p:
                results.append(None)
            elif uniform:  # each pass padded to the call's row count: a batch's rows keep their bits
                n = sum(t.shape[0] for t in parts)
                pad = parts[0].new_full((len(tokens) - n, *parts[0].shape[1:]), self.spec.special_token)
                results.append(self._forward(torch.cat([*parts, pad]), segs, all_positions, batched)[:n])
            else:
                results.append(self._forward(parts, segs, all_positions, batched))
        picked: list[torch.Tensor] = []
        taken = [0, 0]
        for seg in segments:
            n = len(seg.conds)
            for which, rows in enumerate((n, seg.rows - n)):
                result = results[which]
                if seg.logits and rows and result is not None:
                    picked.append(result[taken[which] : taken[which] + rows])
                    taken[which] += rows
        if not picked:  # prefill only: no segment wants logits
            return next(r for r in results if r is not None)[:0]
        logits = torch.cat(picked)
        padding = len(tokens) - logits.shape[0] if uniform else 0  # rows past the last segment
        if padding:
            logits = torch.cat([logits, logits.new_zeros((padding, *logits.shape[1:]))])
        return logits

    @torch.inference_mode()
    def forward_prefixed(
        self, tokens: torch.Tensor, cache: KVCache, prefix: PrefixKV, all_positions: bool = False
    ) -> torch.Tensor:
        """The first forward of a prefix-conditioned (melody) stream: the prefix (L positions) and
        the window's first columns `tokens` (B, K, T) run together, as the reference's first forward
        does, into cache slots 0..L+T-1 (`cache` holds L more slots than the window's columns).
        Later columns go through `forward_segments` with `Segment.offset = L`. Returns fp32 logits
        (B, K, V) of the last column.
        """
        s, w, exact = self.spec, self.w, self.exact
        B, K, T = tokens.shape
        L, D, H, d = prefix.length, s.hidden, s.heads, s.head_dim
        n = L + T  # sequence positions per row
        flat = tokens[:, :, 0] if T == 1 else tokens.transpose(1, 2).reshape(B * T, K)
        x = self.embed(flat, self.positions[L : L + T].repeat(B, 1))
        p = prefix.states.to(self.device, self.dtype) + self.positions[:L]
        x = torch.cat([p, x.view(B, T, D)], dim=1).reshape(B * n, D)  # [prefix; columns] per row
        for i, lw in enumerate(w.layers):
            fast = self.fast[i] if not exact else None
            h = F.layer_norm(x, (D,), lw.sa_ln_w, lw.sa_ln_b, LN_EPS)
            if fast is None:
                q, k, v = (F.linear(h, m).view(B, n, H, d).transpose(1, 2) for m in (lw.q, lw.k, lw.v))
            else:
                q, k, v = fast.qkv(h).view(B, n, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
            cache.write(i, 0, k, v)
            # the reference's first forward attends to the fresh keys / values
            a = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, scale=self.scale)
            a = a.transpose(1, 2).reshape(B * n, D)
            x = x + (F.linear(a, lw.o) if fast is None else fast.o(a))
            h = F.layer_norm(x, (D,), lw.ff_ln_w, lw.ff_ln_b, LN_EPS)
            if fast is None:
                x = x + F.linear(F.gelu(F.linear(h, lw.fc1)), lw.fc2)
            else:
                x = x + fast.fc2(F.gelu(fast.fc1(h)))
        x = F.layer_norm(x, (D,), w.ln_w, w.ln_b, LN_EPS).view(B, n, D)
        if exact:
            if not all_positions:
                x = x[:, -1:]
            logits = torch.stack([F.linear(x, head) for head in w.heads], dim=1)  # (B, K, n', V)
            return logits[:, :, -1].float()
        return self._head(x[:, -1]).view(B, s.num_codebooks, s.card).float()

    def project_prefix(self, chroma: torch.Tensor, text: torch.Tensor | None, chroma_length: int) -> torch.Tensor:
        """Melody conditioning as the reference builds it: one-hot chroma (rows, frames, bins)
        projected and repeated/cut to `chroma_length` frames, then the projected text states
        (rows, S, D) if any -> prefix states (rows, chroma_length + S, D)."""
        a = chroma.to(self.device, self.dtype)
        if self.w.audio_proj_w is not None:
            a = F.linear(a, self.w.audio_proj_w, self.w.audio_proj_b)
        if a.shape[1] < chroma_length:
            a = a.repeat(1, -(-chroma_length // a.shape[1]), 1)
        a = a[:, :chroma_length]
        return a if text is None else torch.cat([a, text.to(self.device, self.dtype)], dim=1)

    @property
    def _head(self) -> Linear:
        """The fused heads of the fast path."""
        if self.head is None:
            raise RuntimeError("the exact kernels have no fused heads")
        return self.head

    def _flatten(
        self, tokens: torch.Tensor | list[torch.Tensor], segments: list[Segment]
    ) -> tuple[torch.Tensor, _Layout]:
        """Tokens as (N, K), one row per (row, column), and where each segment's tokens sit."""
        offsets: list[int] = []
        cond: list[tuple[int, int]] = []
        last: list[int] = []
        o = 0
        if isinstance(tokens, torch.Tensor):
            R, K, T = tokens.shape
            for seg in segments:
                if seg.columns != T:
                    raise ValueError(f"a segment of {seg.columns} columns in a forward of {T}")
            flat = tokens[:, :, 0] if T == 1 else tokens.transpose(1, 2).reshape(R * T, K)
        else:
            if len(tokens) != len(segments):
                raise ValueError("one token tensor per segment")
            flat = torch.cat([t.transpose(1, 2).reshape(-1, t.shape[1]) for t in tokens])
        for seg in segments:
            offsets.append(o)
            if seg.conds:
                cond.append((o, o + len(seg.conds) * seg.columns))
            if seg.logits:
                last.extend(o + r * seg.columns + seg.columns - 1 for r in range(seg.rows))
            o += seg.tokens
        total = flat.shape[0]
        index = None if isinstance(tokens, torch.Tensor) else torch.tensor(last, device=self.device)
        return flat, _Layout(offsets, total, cond, index)

    def _positions(
        self, n: int, segments: list[Segment], uniform: bool, tokens: torch.Tensor | list[torch.Tensor]
    ) -> torch.Tensor:
        """Position embeddings to add to the flat (N, D) token embeddings."""
        table = self.positions
        if len(segments) == 1 and segments[0].tokens == n:
            seg = segments[0]
            pos = table[seg.slot : seg.slot + seg.columns]
            return pos if seg.columns == 1 else pos.repeat(seg.rows, 1)
        pos = torch.zeros(n, self.spec.hidden, device=self.device, dtype=self.dtype)
        o = 0
        for seg in segments:
            pos[o : o + seg.tokens] = table[seg.slot : seg.slot + seg.columns].repeat(seg.rows, 1)
            o += seg.tokens
        return pos

    def _self_attention(
        self,
        layer: int,
        qkv: torch.Tensor | list[torch.Tensor],
        segments: list[Segment],
        layout: _Layout,
        masks: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """Q/K/V (flat: one fused (N, 3D) tensor, or three (N, D) ones in exact mode) -> attention
        output (N, D); writes each segment's k/v into its cache. `masks[i]`: segment i's attention
        mask (built once per forward), None where causal or unmasked."""
        H, d, D = self.spec.heads, self.spec.head_dim, self.spec.hidden
        single = len(segments) == 1 and segments[0].tokens == layout.total
        out = None if single else torch.zeros(layout.total, D, device=self.device, dtype=self.dtype)
        for seg, o, mask in zip(segments, layout.offsets, masks):
            n, start, T = seg.rows, seg.slot, seg.columns
            if isinstance(qkv, torch.Tensor):
                qs, ks, vs = qkv[o : o + n * T].view(n, T, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
            else:
                qs, ks, vs = (m[o : o + n * T].view(n, T, H, d).transpose(1, 2) for m in qkv)
            end = start + T
            cache = seg.cache
            cache.write(layer, start, ks, vs)
            kc, vc = cache.k[layer], cache.v[layer]
            if start > 0 and self._attend8 is not None and cache.k_scale is not None and cache.v_scale is not None:
                # an int8 cache, by the same kernel as the compiled step's
                a = self._attend8(
                    qs, kc[:n], cache.k_scale[layer][:n], vc[:n], cache.v_scale[layer][:n], start, self.scale
                )
            elif start > 0 and self._attend16 is not None and kc.dtype == torch.float16:
                # a float16 cache: query column j sees cache columns 0..start+j, as `mask` says
                a = self._attend16(qs, kc[:n], vc[:n], start, self.scale)
            else:
                if start == 0:
                    keys, values = ks, vs  # the reference attends to the fresh (non-cached) tensors here
                else:
                    keys, values = kc[:n, :, :end], vc[:n, :, :end]
                a = F.scaled_dot_product_attention(
                    qs, keys, values, attn_mask=mask, is_causal=(T > 1 and start == 0), scale=self.scale
                )
            a = a.transpose(1, 2).reshape(n * T, D)
            if out is None:
                return a
            out[o : o + n * T] = a
        assert out is not None
        return out

    def _lean_cross(
        self, layer: int, x: torch.Tensor, fast: FastLayer, segments: list[Segment], layout: _Layout
    ) -> torch.Tensor:
        """Cross-attention for the conditional rows' tokens only (their flat ranges in `layout`)."""
        lw, D = self.w.layers[layer], self.spec.hidden
        cq, co = _cross(fast.cq), _cross(fast.co)
        if len(layout.cond) == 1:
            lo, hi = layout.cond[0]
            h = F.layer_norm(x[lo:hi], (D,), lw.ca_ln_w, lw.ca_ln_b, LN_EPS)
            out = co(self._cross_attention(layer, cq(h), segments, [0] * len(segments), hi - lo, cond_only=True))
            if lo == 0 and hi == x.shape[0]:
                return x + out
            return torch.cat([x[:lo], x[lo:hi] + out, x[hi:]])
        index = torch.cat([torch.arange(lo, hi, device=x.device) for lo, hi in layout.cond])
        h = F.layer_norm(x.index_select(0, index), (D,), lw.ca_ln_w, lw.ca_ln_b, LN_EPS)
        offsets, o = [], 0
        for seg in segments:
            offsets.append(o)
            o += len(seg.conds) * seg.columns
        out = co(self._cross_attention(layer, cq(h), segments, offsets, o, cond_only=True))
        return x.index_add(0, index, out)

    def _cross_attention(
        self,
        layer: int,
        q: torch.Tensor,
        segments: list[Segment],
        offsets: list[int],
        total: int,
        cond_only: bool = False,
    ) -> torch.Tensor:
        """q (total, D) flat -> (total, D); conditional rows attend to their condition, the rest are 0.
        With `cond_only`, q holds only the conditional rows' tokens, segment after segment."""
        H, d, D = self.spec.heads, self.spec.head_dim, self.spec.hidden
        if len(segments) == 1 and len(segments[0].conds) == 1 and total == segments[0].columns:
            c, T = segments[0].conds[0], segments[0].columns
            a = F.scaled_dot_product_attention(
                q.view(1, T, H, d).transpose(1, 2), c.k[layer], c.v[layer], scale=self.scale
            )
            return a.transpose(1, 2).reshape(T, D)
        a = torch.zeros(total, D, device=q.device, dtype=q.dtype)
        for seg, o in zip(segments, offsets):
            T = seg.columns
            for j, c in enumerate(seg.conds):
                r = o + j * T
                qj = q[r : r + T].view(1, T, H, d).transpose(1, 2)
                aj = F.scaled_dot_product_attention(qj, c.k[layer], c.v[layer], scale=self.scale)
                a[r : r + T] = aj.transpose(1, 2).reshape(T, D)
        return a


def _cross_lists(conds: list[CrossKV]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each conditional row's cross-attention keys, and values."""
    return [c.k for c in conds], [c.v for c in conds]


def _packed(m: Linear | None) -> tuple[object, ...] | None:
    """A matrix as the compiled step takes it: int8's fbgemm-packed weights and anchor row, int4's
    four tensors (None stays None: a decoder without cross-attention)."""
    if m is None:
        return None
    if isinstance(m, Int4Linear):
        return m.qs, m.sc, m.ds, m.wc
    if not isinstance(m, Int8Linear):
        raise TypeError("the compiled step multiplies int8 or int4 matrices only")
    return m.packed, m.anchor
