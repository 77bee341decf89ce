"""Random checkpoints of known architectures, built in memory with no download.

`tiny` is the built-in demo and test model; `small` / `medium` / `large` reproduce the published
MusicGen shapes (random weights) so benchmarks measure the real amount of work. The weights are
random, so everything they play is noise: real music needs a trained checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .style import FEATURE_WIDTH, StyleParts, StyleSettings, features_of

# Published MusicGen decoder shapes (hidden, layers, heads); ffn is 4 x hidden.
DECODER_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "small": (1024, 24, 16),
    "medium": (1536, 48, 24),
    "large": (2048, 48, 32),
}

# t5-base, the text encoder of every published MusicGen.
T5_BASE: dict[str, Any] = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
T5_TINY: dict[str, Any] = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)

# EnCodec 32 kHz as MusicGen ships it (facebook/encodec_32khz).
ENCODEC_32K: dict[str, Any] = dict(
    sampling_rate=32000,
    audio_channels=1,
    num_filters=64,
    hidden_size=128,
    codebook_dim=128,
    codebook_size=2048,
    upsampling_ratios=[8, 5, 4, 4],
    num_lstm_layers=2,
    target_bandwidths=[2.2],
    use_causal_conv=False,
    normalize=False,
    chunk_length_s=None,
    pad_mode="reflect",
    use_conv_shortcut=False,
    residual_kernel_size=3,
    compress=2,
    dilation_growth_rate=2,
    kernel_size=7,
    last_kernel_size=7,
)


@dataclass(frozen=True)
class Arch:
    """The knobs a random checkpoint needs; defaults are MusicGen's."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int | None = None  # None = 4 x hidden
    num_codebooks: int = 4
    audio_channels: int = 1
    max_positions: int = 2048
    melody: bool = False  # a MusicGen-Melody checkpoint (chroma + text as a prefix, no cross-attention)
    style: bool = False  # a MusicGen-Style checkpoint (style + text as a prefix, `engine.style`)
    chroma_length: int = 235  # melody: chroma frames in the prefix (MusicGen-Melody's 30 s)
    text: dict[str, Any] = field(default_factory=lambda: dict(T5_TINY))
    codec: dict[str, Any] = field(default_factory=lambda: dict(ENCODEC_32K))


# The built-in models: each size, mono (4 codebooks), stereo (8: L/R pairs, as musicgen-stereo-*),
# melody (chroma + text as a prefix, as musicgen-melody) and style (style + text as a prefix, as
# MusicGen-Style)
BUILT_IN_MODELS: tuple[str, ...] = (
    *DECODER_SIZES,
    *(f"{n}-stereo" for n in DECODER_SIZES),
    *(f"{n}-melody" for n in DECODER_SIZES),
    *(f"{n}-style" for n in DECODER_SIZES),
)


def arch_for(name: str) -> Arch:
    """The architecture of a built-in name (`BUILT_IN_MODELS`); `tiny` has a small T5 and a slim codec
    so it runs anywhere."""
    size, _, variant = name.partition("-")
    hidden, layers, heads = DECODER_SIZES[size]
    if size == "tiny":
        arch = Arch(hidden, layers, heads, codec=dict(ENCODEC_32K, num_filters=16, hidden_size=64, codebook_dim=64))
    else:
        arch = Arch(hidden, layers, heads, text=dict(T5_BASE))
    if variant == "stereo":
        arch = replace(arch, num_codebooks=8, audio_channels=2)
    if variant == "melody":
        arch = replace(arch, melody=True)
    if variant == "style":
        arch = replace(arch, style=True)
    return arch


class _SpecialTokenWarning(logging.Filter):
    """MusicGen's BOS / pad token is 2048, one past its 2048-entry codebooks - by design (the
    embeddings have a row for it). transformers warns about it on every config it builds; the
    warning means nothing to a user, so it is kept off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "must be `None` or an integer within the vocabulary" not in record.getMessage()


def quiet_transformers() -> None:
    """Keep transformers' warning about MusicGen's special token id off the console (once)."""
    from transformers.utils import logging as hf_logging

    for handler in hf_logging._get_library_root_logger().handlers:
        if not any(isinstance(f, _SpecialTokenWarning) for f in handler.filters):
            handler.addFilter(_SpecialTokenWarning())


def hf_config(arch: Arch) -> Any:
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        T5Config,
    )

    quiet_transformers()

    prefix = arch.melody or arch.style  # no cross-attention: transformers' melody decoder
    dec = (MusicgenMelodyDecoderConfig if prefix else MusicgenDecoderConfig)(
        vocab_size=2048,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        ffn_dim=arch.ffn or 4 * arch.hidden,
        num_codebooks=arch.num_codebooks,
        audio_channels=arch.audio_channels,
        max_position_embeddings=arch.max_positions,
    )
    for name in (
        "decoder_start_token_id",
        "pad_token_id",
        "bos_token_id",
    ):  # MusicGen's BOS / pad: one past the codebook
        setattr(dec, name, 2048)
    parts: dict[str, Any] = dict(
        text_encoder=T5Config(**arch.text).to_dict(),
        audio_encoder=EncodecConfig(**arch.codec).to_dict(),
        decoder=dec.to_dict(),
    )
    if prefix:
        return MusicgenMelodyConfig(**parts, chroma_length=arch.chroma_length)
    return MusicgenConfig(**parts)


@torch.no_grad()
def random_hf_model(arch: Arch, seed: int = 0) -> Any:
    """A `MusicgenForConditionalGeneration` (or `MusicgenMelodyForConditionalGeneration`) with
    random weights, fixed by `seed`.

    transformers initialises codec codebooks to zeros (they are learnt by k-means), which would make
    every code decode to the same sound and every encode return index 0; we draw them at random.
    """
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    gen = torch.Generator().manual_seed(seed)
    prefix = arch.melody or arch.style
    cls = MusicgenMelodyForConditionalGeneration if prefix else MusicgenForConditionalGeneration
    with _seeded(seed):
        model = cls(hf_config(arch)).eval()
    for layer in model.audio_encoder.quantizer.layers:
        embed = layer.codebook.embed
        embed.copy_(torch.randn(embed.shape, generator=gen))
        layer.codebook.embed_avg.copy_(embed)
    _tame_output_level(model, gen)
    return model


class _seeded:
    """Seed torch's global RNG for a block (transformers' initialisers use it) and restore it after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self.state)


@torch.no_grad()
def _tame_output_level(model: Any, gen: torch.Generator, target_rms: float = 0.1) -> None:
    """Scale the codec's last conv so random codes decode to about `target_rms`, not to full-scale noise."""
    size = (1, 1, model.config.decoder.num_codebooks, 16)
    codes = torch.randint(0, model.config.audio_encoder.codebook_size, size, generator=gen)
    codes = codes[:, :, : model.config.decoder.num_codebooks // model.config.decoder.audio_channels]
    audio = model.audio_encoder.decode(codes, [None]).audio_values
    rms = float(audio.pow(2).mean().sqrt())
    if rms > 0:
        last = model.audio_encoder.decoder.layers[-1].conv
        factor = target_rms / rms
        g = last.parametrizations.weight.original0 if hasattr(last, "parametrizations") else last.weight_g
        g.mul_(factor)
        last.bias.mul_(factor)


@torch.no_grad()
def random_style(arch: Arch, seed: int = 0) -> StyleParts:
    """A random style conditioner for `arch`'s decoder: `tiny`'s is small (width 64, two layers, a
    one-layer HuBERT standing in for MERT); the others have audiocraft's default scale and a
    HuBERT the size of MERT-v1-95M, so benchmarks do the real work."""
    from transformers import HubertConfig, HubertModel

    tiny = arch.hidden <= 64
    settings = StyleSettings(width=64, heads=4, layers=2) if tiny else StyleSettings()
    with _seeded(seed):
        if tiny:
            config = HubertConfig(
                hidden_size=FEATURE_WIDTH, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            )  # fmt: skip
        else:
            config = HubertConfig(hidden_size=FEATURE_WIDTH)  # hubert-base: MERT-v1-95M's size
        mert = HubertModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    w = settings.width

    def rand(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * scale

    tensors: dict[str, torch.Tensor] = {"embed.weight": rand(w, FEATURE_WIDTH), "embed.bias": torch.zeros(w)}
    for i in range(settings.layers):
        t = f"transformer.layers.{i}."
        tensors.update({
            t + "norm1.weight": torch.ones(w), t + "norm1.bias": torch.zeros(w),
            t + "self_attn.in_proj_weight": rand(3 * w, w), t + "self_attn.out_proj.weight": rand(w, w),
            t + "norm2.weight": torch.ones(w), t + "norm2.bias": torch.zeros(w),
            t + "linear1.weight": rand(4 * w, w), t + "linear2.weight": rand(w, 4 * w),
        })  # fmt: skip
    tensors["batch_norm.running_mean"], tensors["batch_norm.running_var"] = torch.zeros(w), torch.ones(w)
    for q in range(6):  # audiocraft's n_q_out: eval_q of them are used, `StyleConditioner.tuned` may use more
        tensors[f"rvq.vq.layers.{q}._codebook.embed"] = rand(1024, w, scale=1.0)
    tensors["output_proj.weight"], tensors["output_proj.bias"] = (
        rand(arch.hidden, w, scale=0.5),
        torch.zeros(arch.hidden),
    )
    return StyleParts(settings, tensors, features_of(mert))


def random_tokenizer() -> Any:
    """ByT5: a byte tokenizer that needs no vocabulary file, so no download."""
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def save_random_checkpoint(path: str, arch: Arch, seed: int = 0) -> Any:
    """Write a random checkpoint exactly as hub repos ship one (config, safetensors, tokenizer)."""
    model = random_hf_model(arch, seed)
    model.save_pretrained(path)
    random_tokenizer().save_pretrained(path)
    return model
