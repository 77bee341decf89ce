"""Style conditioning (MusicGen-Style): a few seconds of audio -> a short prefix of the decoder.

MusicGen-Style is conditioned on the *style* of an excerpt as well as on text. audiocraft's
`StyleConditioner` turns the excerpt into a handful of vectors through a bottleneck that keeps
style and drops the notes:
1. the excerpt (`excerpt_s` seconds, mono, at the model's rate) is resampled to 24 kHz (julius,
   as audiocraft's `convert_audio`) and fed to MERT, a self-supervised music encoder
   (75 feature frames a second, 768 wide);
2. a linear map to the conditioner's width, a small non-causal transformer (pre-norm, GELU, no
   biases, sinusoidal positions), a batch norm with its running statistics;
3. a residual vector quantizer of `eval_q` codebooks (nearest codeword, Euclidean) - the bottleneck;
4. every `ds_factor`-th frame is kept (75 / 15 = 5 vectors a second) and projected to the decoder's
   width by the conditioner's `output_proj`.
The result is put in front of the text states as the decoder's prefix (no cross-attention), as the
chroma of a melody checkpoint is (`engine.melody`).

audiocraft picks the excerpt at a random offset; a live instrument should not be random, so the
middle of the given audio is used (audiocraft's own `use_middle_of_segment`). With audio exactly
`excerpt_s` long both agree.

Guidance: MusicGen-Style's *double* CFG runs three rows - text and style, style alone, neither -
and mixes them as z = z_u + cfg * (z_s + beta * (z_ts - z_s) - z_u) (`engine.sampling.guide_double`).

MERT is not in the checkpoint's files: audiocraft loads `m-a-p/MERT-v1-95M` from the hub with its
own modelling code (`trust_remote_code`). `mert/` inside the checkpoint (a `save_pretrained` copy)
is used first; any transformers model whose output has `last_hidden_state` 768 wide at 75 frames a
second stands in (the tests use a small random HuBERT, the architecture MERT extends).
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from .conditioning import TextConditioner
from .errors import AudioInputError, CheckpointError, ContextError
from .lm import LanguageModel
from .pieces import run

FEATURE_RATE = 24000  # Hz: MERT's input rate
FEATURE_WIDTH = 768  # MERT's output width (audiocraft hard-codes it too)
MERT_HUB_ID = "m-a-p/MERT-v1-95M"
MERT_DIR = "mert"
LN_EPS = 1e-5
BN_EPS = 1e-5
MIN_EXCERPT_S, MAX_EXCERPT_S = 1.0, 30.0  # style excerpts `tuned` accepts (audiocraft trains on 1.5..4.5 s)

# audiocraft's transformer sizes by name: (width, heads, layers)
TRANSFORMER_SCALES: dict[str, tuple[int, int, int]] = {
    "xsmall": (256, 8, 4),
    "default": (512, 8, 8),
    "large": (1024, 16, 24),
    "none": (512, 0, 0),
}


@dataclass(frozen=True)
class StyleSettings:
    """The conditioner's settings (audiocraft's `conditioners.self_wav.style` config)."""

    width: int = 512  # the conditioner's internal width
    heads: int = 8
    layers: int = 8
    ds_factor: int = 15  # keep every ds_factor-th feature frame
    eval_q: int = 3  # RVQ codebooks used at inference
    excerpt_s: float = 3.0  # seconds of audio the style is taken from
    batch_norm: bool = True
    sample_rate: int = 32000  # the rate audio arrives at (the model's)

    @property
    def excerpt_samples(self) -> int:
        return int(self.excerpt_s * self.sample_rate)

    @classmethod
    def from_audiocraft(cls, style: dict[str, Any], source: str) -> StyleSettings:
        """Read audiocraft's style conditioner config; refuse what we do not run, by name."""
        if style.get("model_name", "mert") != "mert":
            raise CheckpointError(
                f"'{source}': its style conditioner takes '{style.get('model_name')}' features; only MERT ones run here"
            )
        scale = str(style.get("transformer_scale", "default"))
        if scale not in TRANSFORMER_SCALES:
            raise CheckpointError(f"'{source}': unknown style transformer scale '{scale}'")
        width, heads, layers = TRANSFORMER_SCALES[scale]
        eval_q = int(style.get("eval_q", 3))
        if int(style.get("n_q_out", 6)) <= 0:
            raise CheckpointError(f"'{source}': a style conditioner without its quantizer (n_q_out 0) is not supported")
        return cls(
            width=width,
            heads=heads,
            layers=layers,
            ds_factor=int(style.get("ds_factor", 15)),
            eval_q=eval_q,
            excerpt_s=float(style.get("length", 3.0)),
            batch_norm=bool(style.get("batch_norm", True)),
            sample_rate=int(style.get("sample_rate", 32000)),
        )


@dataclass(frozen=True)
class StyleParts:
    """A MusicGen-Style checkpoint's style conditioner as read: settings, weights (audiocraft's
    names after `condition_provider.conditioners.self_wav.`) and the features (MERT) it was trained on."""

    settings: StyleSettings
    tensors: dict[str, torch.Tensor]
    features: Features

    def prefix_frames(self) -> int:
        """Style frames in a prefix for the checkpoint's excerpt: every ds_factor-th feature frame."""
        import julius

        s = self.settings
        samples = julius.resample_frac(torch.zeros(1, s.excerpt_samples), s.sample_rate, FEATURE_RATE).shape[-1]
        return -(-self.features.frames(samples) // s.ds_factor)


@dataclass(frozen=True)
class _Layer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv: torch.Tensor  # (3 * width, width)
    o: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc1: torch.Tensor
    fc2: torch.Tensor


class StyleConditioner:
    """Audio -> style states (1, frames, decoder width), as audiocraft's `StyleConditioner` in eval."""

    def __init__(
        self, settings: StyleSettings, tensors: dict[str, torch.Tensor], features: Features, source: str = "model"
    ) -> None:
        """`tensors`: the conditioner's weights under audiocraft's names without the
        `condition_provider.conditioners.self_wav.` prefix; `features`: MERT (or a stand-in)."""
        self.settings = s = settings
        self.features = features

        def need(key: str) -> torch.Tensor:
            if key not in tensors:
                raise CheckpointError(f"'{source}': its style conditioner lacks '{key}'")
            return tensors[key].float()

        self.embed_w, self.embed_b = need("embed.weight"), need("embed.bias")
        if self.embed_w.shape != (s.width, FEATURE_WIDTH):
            raise CheckpointError(
                f"'{source}': the style conditioner's input map is {tuple(self.embed_w.shape)}, "
                f"not ({s.width}, {FEATURE_WIDTH})"
            )
        self.layers = [
            _Layer(
                ln1_w=need(f"transformer.layers.{i}.norm1.weight"),
                ln1_b=need(f"transformer.layers.{i}.norm1.bias"),
                qkv=need(f"transformer.layers.{i}.self_attn.in_proj_weight"),
                o=need(f"transformer.layers.{i}.self_attn.out_proj.weight"),
                ln2_w=need(f"transformer.layers.{i}.norm2.weight"),
                ln2_b=need(f"transformer.layers.{i}.norm2.bias"),
                fc1=need(f"transformer.layers.{i}.linear1.weight"),
                fc2=need(f"transformer.layers.{i}.linear2.weight"),
            )
            for i in range(s.layers)
        ]
        self.bn_mean = need("batch_norm.running_mean") if s.batch_norm else None
        self.bn_var = need("batch_norm.running_var") if s.batch_norm else None
        # every codebook the quantizer has (audiocraft trains 6); the first `eval_q` are used
        books = sum(1 for k in tensors if k.startswith("rvq.vq.layers.") and k.endswith("._codebook.embed"))
        self.all_codebooks = [need(f"rvq.vq.layers.{q}._codebook.embed") for q in range(max(books, s.eval_q))]
        self.codebooks = self.all_codebooks[: s.eval_q]
        self.out_w, self.out_b = need("output_proj.weight"), need("output_proj.bias")

    def tuned(self, eval_q: int | None = None, excerpt_s: float | None = None) -> StyleConditioner:
        """This conditioner with other inference settings, as audiocraft's
        `set_style_conditioner_params` sets them: `eval_q` codebooks of the quantizer (more: more
        of the excerpt passes, 1 to all it has) and an `excerpt_s`-second excerpt. The weights are
        shared; this one is unchanged."""
        s = self.settings
        q = s.eval_q if eval_q is None else int(eval_q)
        seconds = s.excerpt_s if excerpt_s is None else float(excerpt_s)
        if not 1 <= q <= len(self.all_codebooks):
            books = len(self.all_codebooks)
            raise ContextError(f"style eval_q must be 1..{books} (the quantizer's codebooks), got {q}")
        if not MIN_EXCERPT_S <= seconds <= MAX_EXCERPT_S:
            raise ContextError(f"a style excerpt is {MIN_EXCERPT_S:g}..{MAX_EXCERPT_S:g} s, not {seconds:g}")
        if (q, seconds) == (s.eval_q, s.excerpt_s):
            return self
        other = copy.copy(self)
        other.settings = replace(s, eval_q=q, excerpt_s=seconds)
        other.codebooks = self.all_codebooks[:q]
        return other

    def excerpt(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (samples,) or (channels, samples) at the model's rate -> the mono excerpt
        (excerpt_samples,) from its middle. Refuses audio shorter than the excerpt."""
        s = self.settings
        wav = audio.float()
        if wav.dim() == 2:
            wav = wav.mean(dim=0)
        if wav.dim() != 1:
            raise AudioInputError("style audio must be a (samples,) or (channels, samples) signal")
        need = s.excerpt_samples
        if wav.shape[0] < need:
            raise AudioInputError(
                f"style needs at least {s.excerpt_s:g} s of audio; got {wav.shape[0] / s.sample_rate:.2f} s"
            )
        start = (wav.shape[0] - need) // 2
        return wav[start : start + need]

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio -> style states (1, frames, decoder width); the excerpt is its middle."""
        return run(self.states_steps(audio))

    def states_steps(self, audio: torch.Tensor) -> Generator[None, None, torch.Tensor]:
        """`__call__`, yielding after every stage of the features (`Features.steps`) and every
        transformer layer (a live stream runs it a piece per step). Does no work before its first yield."""
        import julius

        yield
        s = self.settings
        with torch.no_grad():
            wav = julius.resample_frac(self.excerpt(audio)[None], s.sample_rate, FEATURE_RATE)
        feats = yield from self.features.steps(wav)  # (1, frames, 768)
        with torch.no_grad():
            x = F.linear(feats.float(), self.embed_w, self.embed_b)
        yield
        if self.layers:
            x = x + _sin_positions(x.shape[1], s.width)
        for layer in self.layers:
            with torch.no_grad():
                x = self._layer(x, layer)
            yield
        with torch.no_grad():
            if self.bn_mean is not None and self.bn_var is not None:
                t = x.transpose(1, 2)
                t = F.batch_norm(t, self.bn_mean, self.bn_var, None, None, False, 0.0, BN_EPS)
                x = t.transpose(1, 2)
            x = self._quantize(x)[:, :: s.ds_factor]
            return F.linear(x, self.out_w, self.out_b)

    def _layer(self, x: torch.Tensor, w: _Layer) -> torch.Tensor:
        """One pre-norm layer of audiocraft's StreamingTransformer (non-causal, no biases)."""
        s = self.settings
        B, T, D = x.shape
        h = F.layer_norm(x, (D,), w.ln1_w, w.ln1_b, LN_EPS)
        packed = F.linear(h, w.qkv).view(B, T, 3, s.heads, D // s.heads).permute(0, 3, 2, 1, 4)
        q, k, v = packed.unbind(dim=2)  # (B, heads, T, head_dim), strided as audiocraft's
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + F.linear(a, w.o)
        h = F.layer_norm(x, (D,), w.ln2_w, w.ln2_b, LN_EPS)
        return x + F.linear(F.gelu(F.linear(h, w.fc1)), w.fc2)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The residual quantizer in eval: each codebook's nearest codeword of what is left."""
        B, T, D = x.shape
        residual = x.reshape(B * T, D)
        out: torch.Tensor | float = 0.0
        for book in self.codebooks:
            embed = book.t()
            dist = -(residual.pow(2).sum(1, keepdim=True) - 2 * residual @ embed + embed.pow(2).sum(0, keepdim=True))
            q = F.embedding(dist.max(dim=-1).indices, book)
            residual = residual - q
            out = out + q
        assert isinstance(out, torch.Tensor)
        return out.view(B, T, D)


def _sin_positions(length: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """audiocraft's `create_sin_embedding` for positions 0..length-1: (1, length, dim)."""
    half = dim // 2
    positions = torch.arange(length, dtype=torch.float32).view(1, -1, 1)
    adim = torch.arange(half, dtype=torch.float32).view(1, 1, -1)
    phase = positions / (torch.full([], max_period) ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class Features:
    """MERT (or a stand-in) as the style conditioner runs it: (rows, samples at 24 kHz) -> its last
    hidden state (rows, frames, 768).

    A live stream cannot stop for MERT (95 M parameters: a few hundred ms on a CPU), so `steps` runs
    it a stage at a time - each convolution of its feature encoder, the projection and positional
    convolution, each transformer layer - the way HuBERT-family models (MERT among them) run their
    forward. That is only used if it gives exactly what the model's own forward gives (checked once,
    on a second of noise); otherwise the model runs whole, in one piece."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        probe = torch.randn(1, FEATURE_RATE, generator=torch.Generator().manual_seed(0)) * 0.1
        try:
            self.piecewise = torch.equal(run(self._stages(probe)), self(probe))
        except Exception:  # a model laid out differently: it runs whole
            self.piecewise = False

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(wav).last_hidden_state

    def frames(self, samples: int) -> int:
        """Feature frames for `samples` at 24 kHz: counted through the feature encoder's convolutions
        when its stages are known (the check at load), else by running the model once on silence."""
        m: Any = self.model
        layers = list(m.feature_extractor.conv_layers) if self.piecewise else []
        convs = [c for c in (getattr(layer, "conv", None) for layer in layers) if isinstance(c, torch.nn.Conv1d)]
        if not convs or len(convs) != len(layers) or any(c.padding != (0,) for c in convs):
            return int(self(torch.zeros(1, samples)).shape[1])
        for conv in convs:
            samples = (samples - conv.kernel_size[0]) // conv.stride[0] + 1
        return samples

    def steps(self, wav: torch.Tensor) -> Generator[None, None, torch.Tensor]:
        """`__call__`, a stage per piece when that is exact (see the class)."""
        if not self.piecewise:
            return self(wav)
        return (yield from self._stages(wav))

    def _stages(self, wav: torch.Tensor) -> Generator[None, None, torch.Tensor]:
        m: Any = self.model
        encoder = m.encoder
        stable = "StableLayerNorm" in type(encoder).__name__  # the layer norm after the layers, not before
        with torch.no_grad():
            x = wav[:, None]
        for conv in m.feature_extractor.conv_layers:
            x = yield from _conv_layer_steps(conv, x)
        with torch.no_grad():
            x = m.feature_projection(x.transpose(1, 2))
            x = x[0] if isinstance(x, tuple) else x  # wav2vec2's projection also returns its normed input
            x = x + encoder.pos_conv_embed(x)
            if not stable:
                x = encoder.layer_norm(x)
        yield
        for layer in encoder.layers:
            with torch.no_grad():
                out = layer(x)
                x = out[0] if isinstance(out, tuple) else out
            yield
        if stable:
            with torch.no_grad():
                x = encoder.layer_norm(x)
        return x


CONV_PIECE_MACS = 500_000_000  # multiply-adds of one piece of a feature-encoder convolution (~15 ms on a CPU core)


def _conv_layer_steps(layer: torch.nn.Module, x: torch.Tensor) -> Generator[None, None, torch.Tensor]:
    """One convolution layer of a HuBERT-family feature encoder, its convolution over a few stretches
    of time (a piece each) when it is large: (rows, channels, samples) -> (rows, channels', frames).
    Layers of another kind run whole."""
    conv: Any = getattr(layer, "conv", None)
    kind = type(layer).__name__
    norm = next((k for k in ("NoLayerNorm", "LayerNorm", "GroupNorm") if kind.endswith(f"{k}ConvLayer")), None)
    if not isinstance(conv, torch.nn.Conv1d) or norm is None or conv.padding != (0,) or conv.dilation != (1,):
        with torch.no_grad():
            x = layer(x)
        yield
        return x
    (k,), (stride,) = conv.kernel_size, conv.stride
    frames = (x.shape[-1] - k) // stride + 1
    macs = conv.out_channels * conv.in_channels // conv.groups * k * frames * x.shape[0]
    per_piece = max(1, -(-frames // max(1, -(-macs // CONV_PIECE_MACS))))
    parts = []
    for start in range(0, frames, per_piece):
        end = min(frames, start + per_piece)
        with torch.no_grad():
            parts.append(F.conv1d(x[..., start * stride : (end - 1) * stride + k], conv.weight, conv.bias, stride))
        yield
    with torch.no_grad():
        y = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        act: Any = layer.activation
        norm_layer: Any = getattr(layer, "layer_norm", None)
        if norm == "LayerNorm":  # over channels, frame by frame
            y = norm_layer(y.transpose(-2, -1)).transpose(-2, -1)
        elif norm == "GroupNorm":  # over time, channel by channel (the first layer)
            y = norm_layer(y)
        return act(y)


def load_features(where: str, source: str) -> Features:
    """MERT (or any transformers audio encoder 768 wide at 75 Hz) from a folder or hub id, as
    audiocraft loads it (`AutoModel`, its own modelling code allowed)."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(where, trust_remote_code=True).eval()
    except Exception as e:  # transformers raises many types for missing / damaged models
        raise CheckpointError(
            f"'{source}': its style features ({where}) could not be loaded ({type(e).__name__}: {e})"
        ) from None
    return features_of(model)


def features_of(model: torch.nn.Module) -> Features:
    """A transformers audio encoder (in eval mode) as the style conditioner's `Features`."""
    return Features(model.eval())


def style_prefix_steps(
    lm: LanguageModel,
    text: TextConditioner,
    prompt: str | None,
    style: torch.Tensor | None,
    rows: int,
) -> Generator[None, None, torch.Tensor]:
    """The prefix (rows, F + S, D) of a MusicGen-Style stream, as audiocraft's fuser prepends it:
    style states (1, F, D) or none, then the projected text, for `rows` rows: 1 (no guidance),
    2 (text and style; neither) or 3 (text and style; style alone; neither - double guidance).
    What a row leaves out is zeros, as audiocraft's masks make it; no style is one zero position,
    no text one zero position (audiocraft's empty description). Yields after every T5 block."""
    if rows not in (1, 2, 3):
        raise ValueError(f"a style prefix has 1, 2 or 3 rows, not {rows}")
    D = lm.spec.hidden
    if prompt is None:
        words = torch.zeros(1, 1, D, device=lm.device, dtype=lm.dtype)
    else:
        states, mask = yield from text.encode_steps(prompt)
        words = lm.project_condition(states, mask)
    audio = torch.zeros(1, 1, D, device=lm.device, dtype=lm.dtype) if style is None else style.to(lm.device, lm.dtype)
    if audio.dim() != 3 or audio.shape[0] != 1 or audio.shape[2] != D:
        raise ValueError(f"style states must be (1, frames, {D})")
    quiet_words, quiet_audio = torch.zeros_like(words), torch.zeros_like(audio)
    pairs = [(audio, words), (audio, quiet_words), (quiet_audio, quiet_words)]
    chosen = pairs[:1] if rows == 1 else pairs[::2] if rows == 2 else pairs
    return torch.cat([torch.cat(pair, dim=1) for pair in chosen], dim=0)
