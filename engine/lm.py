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
    embed: list[torch.Tensor]  # K x (V + 1, D); row V is BOS / pad
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
    return LMWeights(
        embed=[sd[f"{p}embed_tokens.{k}.weight"] for k in range(spec.num_codebooks)],
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


def linear_skinny(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T for a handful of rows, computed as W @ x.T.

    MKL runs (N x D) @ (D x M) near memory bandwidth (~20 GB/s here) when x is row-major, while
    `F.linear` with M = 2 (the CFG pair) reads the weights twice (~9 GB/s), and a column-major x
    falls to ~6 GB/s: hence the explicit `.contiguous()` on the way in. The result is made
    row-major on the way out too (M x N floats, nothing next to W): a strided Q would send SDPA
    to its slow math path, and the next layer's input would be column-major again.
    """
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > 8:
        return F.linear(x, w)
    return (w @ flat.contiguous().t()).t().contiguous().reshape(*x.shape[:-1], w.shape[0])


class LanguageModel:
    """Stateless compute over `LMWeights`; all per-stream state lives in `KVCache` / `CrossKV`.

    `exact=True` reproduces the reference's arithmetic: the same matmul shapes in the same order,
    cross-attention projections over every row, heads over every prefill column. That is what the
    parity tests hold to. `exact=False` (live default) fuses Q/K/V and the heads, runs cross-attention
    for the conditional rows only and uses `linear_skinny`: the same model, rounded differently.
    """

    def __init__(self, spec: LMSpec, weights: LMWeights, exact: bool = False) -> None:
        self.spec = spec
        self.w = weights
        self.exact = exact
        ref = weights.ln_w
        self.device, self.dtype = ref.device, ref.dtype
        self.positions = sinusoidal_positions(spec.max_positions, spec.hidden).to(self.device, self.dtype)
        self.scale = spec.head_dim**-0.5

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
    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Sum of codebook embeddings in codebook order, then positions (reference order)."""
        x = F.embedding(tokens[:, 0], self.w.embed[0])
        for k in range(1, self.spec.num_codebooks):
            x = x + F.embedding(tokens[:, k], self.w.embed[k])
        return x + self.positions[start : start + tokens.shape[-1]]

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
        s, w, exact = self.spec, self.w, self.exact
        lin = F.linear if exact else linear_skinny
        B, _, T = tokens.shape
        D, H, d = s.hidden, s.heads, s.head_dim
        end = start + T
        x = self.embed(tokens, start)
        conds = [] if cross is None else [cross] if isinstance(cross, CrossKV) else cross
        n_cond = len(conds)
        causal_mask = None
        if T > 1 and start > 0:
            causal_mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(start)
        for i, lw in enumerate(w.layers):
            # self-attention over the static cache
            h = F.layer_norm(x, (D,), lw.sa_ln_w, lw.sa_ln_b, LN_EPS)
            if exact:
                q, k, v = F.linear(h, lw.q), F.linear(h, lw.k), F.linear(h, lw.v)
            else:
                q, k, v = lin(h, lw.qkv).split(D, dim=-1)
            q = q.view(B, T, H, d).transpose(1, 2)
            k = k.view(B, T, H, d).transpose(1, 2)
            v = v.view(B, T, H, d).transpose(1, 2)
            kc, vc = cache.k[i, :B], cache.v[i, :B]
            kc[:, :, start:end] = k
            vc[:, :, start:end] = v
            if start == 0:
                keys, values = k, v  # the reference attends to the fresh (non-cached) tensors here
            else:
                keys, values = kc[:, :, :end], vc[:, :, :end]
            a = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=causal_mask, is_causal=(T > 1 and start == 0), scale=self.scale
            )
            x = x + lin(a.transpose(1, 2).reshape(B, T, D), lw.o)
            # cross-attention; the uncond rows' output is exactly zero
            if n_cond:
                rows = B if exact else n_cond  # exact: projections over all rows, as the reference
                h = F.layer_norm(x[:rows], (D,), lw.ca_ln_w, lw.ca_ln_b, LN_EPS)
                q = lin(h, lw.cq).view(rows, T, H, d).transpose(1, 2)
                if rows == 1:
                    a = F.scaled_dot_product_attention(q, conds[0].k[i], conds[0].v[i], scale=self.scale)
                else:
                    a = torch.zeros_like(q)
                    for r, c in enumerate(conds):
                        a[r : r + 1] = F.scaled_dot_product_attention(q[r : r + 1], c.k[i], c.v[i], scale=self.scale)
                out = lin(a.transpose(1, 2).reshape(rows, T, D), lw.co)
                x = x + out if rows == B else torch.cat([x[:rows] + out, x[rows:]])
            # feed-forward
            h = F.layer_norm(x, (D,), lw.ff_ln_w, lw.ff_ln_b, LN_EPS)
            x = x + lin(F.gelu(lin(h, lw.fc1)), lw.fc2)
        x = F.layer_norm(x, (D,), w.ln_w, w.ln_b, LN_EPS)
        if not (all_positions and exact):
            x = x[:, -1:]
        if exact:
            logits = torch.stack([F.linear(x, head) for head in w.heads], dim=1)  # (B, K, T', V)
            return logits[:, :, -1].float()
        return lin(x[:, -1], w.heads_cat).view(B, s.num_codebooks, s.card).float()
