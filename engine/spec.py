"""What a checkpoint *is*: sizes and codec layout, read from its config, never hard-coded.

Every other engine module takes a spec instead of reading Hugging Face config objects, so the
engine has one place where the checkpoint format is interpreted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .codebook_patterns import PatternSpec
from .errors import CheckpointError


@dataclass(frozen=True)
class LMSpec:
    """The MusicGen decoder (the language model over codec tokens)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    num_codebooks: int  # all codebooks, both channels for stereo checkpoints
    card: int  # codebook size; token id `card` is the special BOS / pad row
    max_positions: int  # rows in the sinusoidal position table = the longest context in columns
    audio_channels: int
    activation: str
    text_hidden: int  # width of the text encoder's output, before `enc_to_dec_proj`
    has_enc_to_dec_proj: bool
    # MusicGen-Melody: the conditioning (projected chroma, then projected text) is a prefix of the
    # decoder's sequence instead of cross-attention; 0 chroma bins = a cross-attention model
    num_chroma: int = 0
    chroma_length: int = 0  # chroma frames in the prefix (a shorter melody repeats to fill it)
    has_audio_proj: bool = False  # `audio_enc_to_dec_proj` (num_chroma -> hidden)
    # MusicGen-Style: style frames (`engine.style`), then projected text, are the prefix instead
    style_frames: int = 0
    # the codebook pattern an audiocraft checkpoint records; None: MusicGen's delay pattern
    pattern: PatternSpec | None = None

    @property
    def prefix_conditioned(self) -> bool:
        """Whether conditioning is a prefix of the sequence (melody and style checkpoints)."""
        return self.num_chroma > 0 or self.style_frames > 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def special_token(self) -> int:
        """BOS and pad share one id in MusicGen."""
        return self.card

    @property
    def channel_codebooks(self) -> int:
        """Codebooks per audio channel; the delay pattern's depth."""
        return self.num_codebooks // self.audio_channels

    @property
    def codebook_pattern(self) -> PatternSpec:
        """The pattern this checkpoint was trained with (`engine.codebook_patterns`)."""
        return self.pattern or PatternSpec.delay(self.musicgen_delays)

    @property
    def musicgen_delays(self) -> tuple[int, ...]:
        """MusicGen's delays: codebook k one column after k - 1; stereo's L/R pairs share one."""
        return tuple(k // self.audio_channels for k in range(self.num_codebooks))

    @property
    def delays(self) -> tuple[int, ...]:
        """Delay in columns of each codebook, as the streaming engine steps them: the checkpoint's
        own for a plain delay pattern, else MusicGen's (such a checkpoint renders with its own
        pattern, `engine.pattern_run`, and does not stream)."""
        return self.codebook_pattern.plain_delays or self.musicgen_delays


@dataclass(frozen=True)
class CodecSpec:
    """An EnCodec (SEANet) codec as MusicGen uses it: non-normalised, unchunked."""

    sample_rate: int
    channels: int
    num_filters: int
    hidden: int
    codebook_size: int
    codebook_dim: int
    ratios: tuple[int, ...]
    kernel_size: int
    last_kernel_size: int
    residual_kernel_size: int
    num_residual_layers: int
    dilation_growth_rate: int
    compress: int
    num_lstm_layers: int
    causal: bool
    pad_mode: str
    trim_right_ratio: float
    use_conv_shortcut: bool
    num_quantizers: int  # quantizers the LM uses per channel

    @property
    def hop(self) -> int:
        """Samples per code frame."""
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.hop


@dataclass(frozen=True)
class ModelSpec:
    lm: LMSpec
    codec: CodecSpec

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    def seconds_to_frames(self, seconds: float) -> int:
        return int(round(seconds * self.codec.frame_rate))


def spec_from_hf_config(config: Any) -> ModelSpec:
    """Build a ModelSpec from a `transformers.MusicgenConfig` or `MusicgenMelodyConfig`; reject
    layouts we cannot run."""
    dec, enc, txt = config.decoder, config.audio_encoder, config.text_encoder
    model_type = getattr(config, "model_type", "musicgen")
    if model_type not in ("musicgen", "musicgen_melody"):
        raise CheckpointError(
            f"checkpoint model type '{model_type}' is not supported (only 'musicgen' and 'musicgen_melody')"
        )
    melody = model_type == "musicgen_melody"
    if enc.norm_type != "weight_norm":
        raise CheckpointError(f"codec norm_type '{enc.norm_type}' is not supported (MusicGen codecs use weight_norm)")
    if getattr(enc, "normalize", False) or getattr(enc, "chunk_length_s", None):
        raise CheckpointError("normalised or chunked EnCodec codecs are not supported (MusicGen's are neither)")
    if dec.hidden_size % dec.num_attention_heads:
        raise CheckpointError("decoder hidden_size is not divisible by num_attention_heads")
    if dec.num_codebooks % dec.audio_channels:
        raise CheckpointError("decoder num_codebooks is not divisible by audio_channels")
    if dec.activation_function != "gelu":
        raise CheckpointError(f"decoder activation '{dec.activation_function}' is not supported (MusicGen uses gelu)")
    cross = getattr(dec, "cross_attention_hidden_size", None)
    lm = LMSpec(
        hidden=dec.hidden_size,
        layers=dec.num_hidden_layers,
        heads=dec.num_attention_heads,
        ffn=dec.ffn_dim,
        num_codebooks=dec.num_codebooks,
        card=dec.vocab_size,
        max_positions=dec.max_position_embeddings,
        audio_channels=dec.audio_channels,
        activation=dec.activation_function,
        text_hidden=txt.hidden_size if hasattr(txt, "hidden_size") else txt.d_model,
        has_enc_to_dec_proj=(txt.hidden_size != dec.hidden_size and (melody or cross is None)),
        num_chroma=int(config.num_chroma) if melody else 0,
        chroma_length=int(config.chroma_length) if melody else 0,
        has_audio_proj=melody and config.num_chroma != dec.hidden_size,
    )
    if enc.codebook_size != lm.card:
        raise CheckpointError(f"codec codebook_size {enc.codebook_size} != decoder vocab_size {lm.card}")
    codec = CodecSpec(
        sample_rate=enc.sampling_rate,
        channels=enc.audio_channels,
        num_filters=enc.num_filters,
        hidden=enc.hidden_size,
        codebook_size=enc.codebook_size,
        codebook_dim=enc.codebook_dim if enc.codebook_dim is not None else enc.hidden_size,
        ratios=tuple(enc.upsampling_ratios),
        kernel_size=enc.kernel_size,
        last_kernel_size=enc.last_kernel_size,
        residual_kernel_size=enc.residual_kernel_size,
        num_residual_layers=enc.num_residual_layers,
        dilation_growth_rate=enc.dilation_growth_rate,
        compress=enc.compress,
        num_lstm_layers=enc.num_lstm_layers,
        causal=enc.use_causal_conv,
        pad_mode=enc.pad_mode,
        trim_right_ratio=enc.trim_right_ratio,
        use_conv_shortcut=enc.use_conv_shortcut,
        num_quantizers=lm.channel_codebooks,
    )
    if codec.channels != 1:
        raise CheckpointError("only mono EnCodec codecs are supported (stereo MusicGen decodes per channel)")
    return ModelSpec(lm=lm, codec=codec)
