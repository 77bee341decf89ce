"""The decoder's weights as the forward reads them: picked out of a checkpoint's state dict
(transformers' key layout; audiocraft's is converted to it at load) once, and the position table.
`engine.lm` multiplies by them; this is where a new layout or checkpoint kind is mapped."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .spec import LMSpec


@dataclass
class LayerWeights:
    sa_ln_w: torch.Tensor
    sa_ln_b: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ca_ln_w: torch.Tensor | None  # cross-attention: None in a prefix-conditioned (melody) decoder
    ca_ln_b: torch.Tensor | None
    cq: torch.Tensor | None
    ck: torch.Tensor | None
    cv: torch.Tensor | None
    co: torch.Tensor | None
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
    audio_proj_w: torch.Tensor | None = None  # melody: audio_enc_to_dec_proj (D, num_chroma)
    audio_proj_b: torch.Tensor | None = None


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
        cross = (lambda key: None) if spec.prefix_conditioned else (lambda key: sd[q + key])  # noqa: E731
        return LayerWeights(
            sa_ln_w=sd[q + "self_attn_layer_norm.weight"],
            sa_ln_b=sd[q + "self_attn_layer_norm.bias"],
            q=qkv[:D],
            k=qkv[D : 2 * D],
            v=qkv[2 * D :],
            qkv=qkv,
            o=sd[q + "self_attn.out_proj.weight"],
            ca_ln_w=cross("encoder_attn_layer_norm.weight"),
            ca_ln_b=cross("encoder_attn_layer_norm.bias"),
            cq=cross("encoder_attn.q_proj.weight"),
            ck=cross("encoder_attn.k_proj.weight"),
            cv=cross("encoder_attn.v_proj.weight"),
            co=cross("encoder_attn.out_proj.weight"),
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
        audio_proj_w=sd.get("audio_enc_to_dec_proj.weight") if spec.has_audio_proj else None,
        audio_proj_b=sd.get("audio_enc_to_dec_proj.bias") if spec.has_audio_proj else None,
    )
