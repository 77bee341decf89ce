"""The MusicGen decoder over a preallocated KV cache.

Why our own: transformers grows its cache by concatenation at every step and recomputes masks and
position lookups in Python per token. Here the cache is allocated once for the whole window, the
cross-attention keys/values are computed once per condition, and a step is a straight run of
matmuls. The numerics deliberately mirror the reference op for op (same matmul shapes, same SDPA
calls, same summation order) so greedy codes are token-exact with `transformers`.

Shapes: B = batch rows (cond rows first, then uncond rows for CFG), K = codebooks, T = columns in
this call, D = hidden, H = heads, d = head dim, S = text tokens, V = codebook size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .linear import Linear, check_precision, make_linear
from .spec import LMSpec

LN_EPS = 1e-5  # nn.LayerNorm's default, which MusicGen uses


@dataclass
class LayerWeights:
    sa_ln_w: torch.Tensor
    sa_ln_b: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ca_ln_w: torch.Tensor
    ca_ln_b: torch.Tensor
    cq: torch.Tensor
    ck: torch.Tensor
    cv: torch.Tensor
    co: torch.Tensor
    ff_ln_w: torch.Tensor
    ff_ln_b: torch.Tensor
    fc1: torch.Tensor
    fc2: torch.Tensor
    qkv: torch.Tensor  # (3D, D): q, k, v stacked; q / k / v above are views into it


@dataclass
class LMWeights:
    embed: list[torch.Tensor]  # K x (V + 1, D), views into embed_cat; row V is BOS / pad
    embed_cat: torch.Tensor  # (K * (V + 1), D): every codebook's table, for one fused lookup
    layers: list[LayerWeights]
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    heads: list[torch.Tensor]  # K x (V, D), views into heads_cat
    heads_cat: torch.Tensor  # (K * V, D)
    proj_w: torch.Tensor | None  # enc_to_dec_proj (D, text_hidden), None when widths already match
    proj_b: torch.Tensor | None


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """MusicGen's fp32 position table: cos half, then sin half (tensor2tensor layout)."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.int64).float() * -step)
    angles = torch.arange(num_positions, dtype=torch.int64).float().unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).view(num_positions, -1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    return table


def lm_weights_from_state_dict(spec: LMSpec, sd: dict[str, torch.Tensor]) -> LMWeights:
    """Pick the decoder's tensors out of a full MusicGen state dict (transformers' key layout)."""
    p = "decoder.model.decoder."

    D = spec.hidden

    def layer(i: int) -> LayerWeights:
        q = f"{p}layers.{i}."
        qkv = torch.cat([sd[q + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        return LayerWeights(
            sa_ln_w=sd[q + "self_attn_layer_norm.weight"],
            sa_ln_b=sd[q + "self_attn_layer_norm.bias"],
            q=qkv[:D],
            k=qkv[D : 2 * D],
            v=qkv[2 * D :],
            qkv=qkv,
            o=sd[q + "self_attn.out_proj.weight"],
            ca_ln_w=sd[q + "encoder_attn_layer_norm.weight"],
            ca_ln_b=sd[q + "encoder_attn_layer_norm.bias"],
            cq=sd[q + "encoder_attn.q_proj.weight"],
            ck=sd[q + "encoder_attn.k_proj.weight"],
            cv=sd[q + "encoder_attn.v_proj.weight"],
            co=sd[q + "encoder_attn.out_proj.weight"],
            ff_ln_w=sd[q + "final_layer_norm.weight"],
            ff_ln_b=sd[q + "final_layer_norm.bias"],
            fc1=sd[q + "fc1.weight"],
            fc2=sd[q + "fc2.weight"],
        )

    heads_cat = torch.cat([sd[f"decoder.lm_heads.{k}.weight"] for k in range(spec.num_codebooks)])
    embed_cat = torch.cat([sd[f"{p}embed_tokens.{k}.weight"] for k in range(spec.num_codebooks)])
    return LMWeights(
        embed=list(embed_cat.split(embed_cat.shape[0] // spec.num_codebooks)),
        embed_cat=embed_cat,
        layers=[layer(i) for i in range(spec.layers)],
        ln_w=sd[p + "layer_norm.weight"],
        ln_b=sd[p + "layer_norm.bias"],
        heads=list(heads_cat.split(spec.card)),
        heads_cat=heads_cat,
        proj_w=sd.get("enc_to_dec_proj.weight") if spec.has_enc_to_dec_proj else None,
        proj_b=sd.get("enc_to_dec_proj.bias") if spec.has_enc_to_dec_proj else None,
    )


@dataclass
class KVCache:
    """Self-attention keys/values for `batch` rows and `capacity` columns, allocated once.

    `k[i]` / `v[i]` are layer i's (batch, H, capacity, d) buffers. Column t of the stream lives at
    slot t; nothing is ever appended or reallocated.
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def rearrange_rows(self, rows: list[int], filled: int) -> None:
        """Row r becomes old row rows[r], over the first `filled` columns (a prompt row added by
        copying another's history, rows dropped after a crossfade)."""
        if rows == list(range(len(rows))):
            return
        idx = torch.tensor(rows, device=self.k.device)
        for buf in (self.k, self.v):
            buf[:, : len(rows), :, :filled] = buf[:, idx, :, :filled]


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
class FastLayer:
    """One layer's matrices as the live path multiplies them (`engine.linear`, any precision)."""

    qkv: Linear
    o: Linear
    cq: Linear
    co: Linear
    fc1: Linear
    fc2: Linear


@dataclass
class Segment:
    """The rows of a forward that belong to one stream: `rows` consecutive rows (conditional rows
    first, one per `CrossKV` in `conds`, then unconditional ones) at positions start..start+T-1,
    whose keys/values live in rows 0..rows-1 of `cache`."""

    rows: int
    start: int
    cache: KVCache
    conds: list[CrossKV]


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

    def __init__(self, spec: LMSpec, weights: LMWeights, exact: bool = False, precision: str = "float32") -> None:
        self.spec = spec
        self.w = weights
        self.exact = exact
        ref = weights.ln_w
        self.device, self.dtype = ref.device, ref.dtype
        check_precision(precision, self.device, exact)
        self.precision = precision
        self.positions = sinusoidal_positions(spec.max_positions, spec.hidden).to(self.device, self.dtype)
        self.scale = spec.head_dim**-0.5
        rows = weights.embed_cat.shape[0] // spec.num_codebooks  # V + 1 per codebook
        self.embed_offsets = (torch.arange(spec.num_codebooks, device=self.device) * rows).view(1, -1, 1)
        self.fast: list[FastLayer] = []
        self.head: Linear | None = None
        if not exact:
            mk = lambda w: make_linear(w, precision)  # noqa: E731
            self.fast = [
                FastLayer(qkv=mk(lw.qkv), o=mk(lw.o), cq=mk(lw.cq), co=mk(lw.co), fc1=mk(lw.fc1), fc2=mk(lw.fc2))
                for lw in weights.layers
            ]
            self.head = mk(weights.heads_cat)

    @property
    def step_weight_bytes(self) -> int:
        """Bytes of weights one step reads (the matrices; embeddings are lookups)."""
        if self.exact:
            mats = [t for lw in self.w.layers for t in (lw.qkv, lw.o, lw.cq, lw.co, lw.fc1, lw.fc2)]
            return sum(t.numel() * t.element_size() for t in mats + [self.w.heads_cat])
        return sum(m.nbytes for f in self.fast for m in vars(f).values()) + self.head.nbytes

    # -- state ---------------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        s = self.spec
        capacity = min(capacity, s.max_positions)
        shape = (s.layers, batch, s.heads, capacity, s.head_dim)
        return KVCache(
            k=torch.zeros(shape, device=self.device, dtype=self.dtype),
            v=torch.zeros(shape, device=self.device, dtype=self.dtype),
        )

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
        s = self.spec
        rows, S, _ = states.shape
        ks, vs = [], []
        for lw in self.w.layers:
            k = F.linear(states, lw.ck).view(rows, S, s.heads, s.head_dim).transpose(1, 2)
            v = F.linear(states, lw.cv).view(rows, S, s.heads, s.head_dim).transpose(1, 2)
            ks.append(k[:n_cond])
            vs.append(v[:n_cond])
        return CrossKV(k=torch.stack(ks), v=torch.stack(vs))

    # -- compute -------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Sum of codebook embeddings, then positions. Exact mode adds codebook by codebook in the
        reference's order; the fast path does one lookup into the stacked tables and one sum."""
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
        return self.forward_segments(tokens, [Segment(tokens.shape[0], start, cache, conds)], all_positions)

    @torch.inference_mode()  # ~10 % less per-op dispatch than no_grad; writes into the (normal) caches are fine
    def forward_segments(
        self, tokens: torch.Tensor, segments: list[Segment], all_positions: bool = False, batched: bool = False
    ) -> torch.Tensor:
        """`forward` for several streams at once: tokens (R, K, T), the segments' rows in order from
        row 0; rows past the last segment are padding (their values are computed and ignored).
        `batched` (implied by several segments or padding) makes every row's result independent of
        the other rows' values, at some cost; a lone stream skips that and the unconditional rows'
        cross-attention matmuls."""
        s, w, exact = self.spec, self.w, self.exact
        R, _, T = tokens.shape
        D, H, d = s.hidden, s.heads, s.head_dim
        if len(segments) == 1:
            pos = self.positions[segments[0].start : segments[0].start + T]
        else:
            pos = torch.zeros(R, T, D, device=self.device, dtype=self.dtype)
            r = 0
            for seg in segments:
                pos[r : r + seg.rows] = self.positions[seg.start : seg.start + T]
                r += seg.rows
        x = self.embed(tokens, pos)
        # prefill chunks after the first attend causally within themselves and to the whole past
        masks = [
            torch.ones(T, seg.start + T, dtype=torch.bool, device=self.device).tril(seg.start)
            if T > 1 and seg.start > 0 else None
            for seg in segments
        ]
        any_cond = any(seg.conds for seg in segments)
        solo = not batched and len(segments) == 1 and segments[0].rows == R
        lean_cross = not exact and solo and any_cond
        ind = not solo  # a batch: each row's result must not depend on the others' values
        for i, lw in enumerate(w.layers):
            fast = None if exact else self.fast[i]
            # self-attention, each stream over its own static cache
            h = F.layer_norm(x, (D,), lw.sa_ln_w, lw.sa_ln_b, LN_EPS)
            if exact:
                q, k, v = (F.linear(h, m).view(R, T, H, d).transpose(1, 2) for m in (lw.q, lw.k, lw.v))
            else:
                q, k, v = fast.qkv(h, ind).view(R, T, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
            a = self._self_attention(i, q, k, v, segments, masks)
            x = x + (F.linear(a, lw.o) if exact else fast.o(a, ind))
            # cross-attention; unconditional (and padding) rows attend to nothing: exactly zero
            if lean_cross:  # one unpadded stream: only its conditional rows need computing
                n = len(segments[0].conds)
                h = F.layer_norm(x[:n], (D,), lw.ca_ln_w, lw.ca_ln_b, LN_EPS)
                q = fast.cq(h).view(n, T, H, d).transpose(1, 2)
                out = fast.co(self._cross_attention(i, q, segments))
                x = x + out if n == R else torch.cat([x[:n] + out, x[n:]])
            elif any_cond:
                h = F.layer_norm(x, (D,), lw.ca_ln_w, lw.ca_ln_b, LN_EPS)
                q = (F.linear(h, lw.cq) if exact else fast.cq(h, ind)).view(R, T, H, d).transpose(1, 2)
                a = self._cross_attention(i, q, segments)
                x = x + (F.linear(a, lw.co) if exact else fast.co(a, ind))
            # feed-forward
            h = F.layer_norm(x, (D,), lw.ff_ln_w, lw.ff_ln_b, LN_EPS)
            if exact:
                x = x + F.linear(F.gelu(F.linear(h, lw.fc1)), lw.fc2)
            else:
                x = x + fast.fc2(F.gelu(fast.fc1(h, ind)), ind)
        x = F.layer_norm(x, (D,), w.ln_w, w.ln_b, LN_EPS)
        if exact:
            if not all_positions:
                x = x[:, -1:]
            logits = torch.stack([F.linear(x, head) for head in w.heads], dim=1)  # (R, K, T', V)
            return logits[:, :, -1].float()
        return self.head(x[:, -1], ind).view(R, s.num_codebooks, s.card).float()

    def _self_attention(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: list[Segment],
        masks: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """q/k/v (R, H, T, d) -> attention output (R, T, D); writes each segment's k/v to its cache.
        `masks[i]`: segment i's attention mask (built once per forward), None where causal/unmasked."""
        R, H, T, d = q.shape
        single = len(segments) == 1 and segments[0].rows == R
        out = None if single else torch.zeros(R, T, H * d, device=q.device, dtype=q.dtype)
        r = 0
        for seg, mask in zip(segments, masks):
            n, start, end = seg.rows, seg.start, seg.start + T
            qs, ks, vs = (q, k, v) if single else (q[r : r + n], k[r : r + n], v[r : r + n])
            kc, vc = seg.cache.k[layer], seg.cache.v[layer]
            kc[:n, :, start:end] = ks
            vc[:n, :, start:end] = vs
            if start == 0:
                keys, values = ks, vs  # the reference attends to the fresh (non-cached) tensors here
            else:
                keys, values = kc[:n, :, :end], vc[:n, :, :end]
            a = F.scaled_dot_product_attention(
                qs, keys, values, attn_mask=mask, is_causal=(T > 1 and start == 0), scale=self.scale
            )
            a = a.transpose(1, 2).reshape(n, T, H * d)
            if single:
                return a
            out[r : r + n] = a
            r += n
        return out

    def _cross_attention(self, layer: int, q: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """q (R, H, T, d) -> (R, T, D); conditional rows attend to their condition, the rest are 0."""
        R, H, T, d = q.shape
        if len(segments) == 1 and len(segments[0].conds) == R == 1:
            c = segments[0].conds[0]
            a = F.scaled_dot_product_attention(q, c.k[layer], c.v[layer], scale=self.scale)
            return a.transpose(1, 2).reshape(R, T, H * d)
        a = torch.zeros_like(q)
        r = 0
        for seg in segments:
            for j, c in enumerate(seg.conds):
                a[r + j : r + j + 1] = F.scaled_dot_product_attention(
                    q[r + j : r + j + 1], c.k[layer], c.v[layer], scale=self.scale
                )
            r += seg.rows
        return a.transpose(1, 2).reshape(R, T, H * d)
