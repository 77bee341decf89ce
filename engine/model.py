"""A loaded MusicGen: language model, text conditioner and codec, ready to run streams.

This object is shared and immutable once built; every stream's state lives in its `StreamGenerator` (engine.generator).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any, TypedDict

import torch

from .checkpoint import Checkpoint, Progress, load_checkpoint, stderr_progress
from .codebook_patterns import PatternSpec, max_frames_for
from .codec import Codec, check_codec_precision
from .codec_step import cache_codec_kernels
from .conditioning import Condition, TextConditioner
from .errors import CheckpointError, ContextError
from .kvcache import cache_kernels, check_kv
from .lm import LanguageModel
from .lm_weights import lm_weights_from_state_dict
from .melody import ChromaExtractor, ChromaSettings, prefix_states_steps
from .pattern import DelayPattern
from .pieces import run
from .spec import ModelSpec
from .style import StyleConditioner, style_prefix_steps

# how guidance runs the conditional and unconditional rows: `batched` in one forward (transformers'
# way, the fastest), `two-step` in two (audiocraft's `two_step_cfg`), `auto` as the checkpoint says
GUIDANCE: tuple[str, ...] = ("auto", "batched", "two-step")


class Kernels(TypedDict):
    """The settings that choose how a model computes, as `MusicGen.load` and `run_bench` take them
    (the CLI builds one from its flags, a cluster's replicas load with it)."""

    exact: bool
    precision: str
    guidance: str
    kv: str
    codec: str


class MusicGen:
    def __init__(
        self,
        ckpt: Checkpoint,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        exact: bool = False,
        precision: str = "float32",
        guidance: str = "auto",
        kv: str = "float32",
        codec: str = "float32",
    ) -> None:
        """`precision`: how the live path stores the decoder's matrices (`engine.linear.PRECISIONS`);
        activations and the codec stay in `dtype`. `guidance`: `GUIDANCE` - how the conditional and
        unconditional rows run (auto: as the checkpoint was trained). `kv`: how the self-attention
        caches are stored (`engine.kvcache.KV_DTYPES`). `codec`: the streaming decoder's matrices
        (`engine.codec.CODEC_PRECISIONS`)."""
        if guidance not in GUIDANCE:
            raise CheckpointError(f"guidance '{guidance}' is not one of {', '.join(GUIDANCE)}")
        self.source = ckpt.source
        self.spec: ModelSpec = ckpt.spec
        self.device = torch.device(device)
        self.dtype = dtype
        tensors = {
            k: v.to(self.device, dtype if v.is_floating_point() else v.dtype)
            for k, v in ckpt.tensors.items()
            if k.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj."))
        }
        two_step = guidance == "two-step" or (guidance == "auto" and ckpt.two_step_cfg)
        if two_step and self.spec.lm.prefix_conditioned:
            raise CheckpointError(
                "two-step guidance runs on text (cross-attention) checkpoints, not melody or style ones"
            )
        self.guidance = "two-step" if two_step else "batched"
        self.lm = LanguageModel(
            self.spec.lm,
            lm_weights_from_state_dict(self.spec.lm, tensors),
            exact=exact,
            precision=precision,
            two_step=two_step,
            kv=kv,
        )
        check_codec_precision(codec, self.device, exact)
        self.codec = Codec(self.spec.codec, ckpt.tensors, self.device, precision=codec)
        self.tokenizer = ckpt.tokenizer
        self.conditioner = TextConditioner(ckpt.tokenizer, _build_t5(ckpt), self.lm)
        self.pattern = DelayPattern(self.spec.lm.delays, self.spec.lm.special_token)
        self.chroma: ChromaExtractor | None = None  # melody checkpoints: audio -> one-hot chroma
        if self.spec.lm.num_chroma:
            source = Path(ckpt.source).expanduser()
            self.chroma = ChromaExtractor(ChromaSettings.from_directory(source) if source.is_dir() else None)
        self.style: StyleConditioner | None = None  # MusicGen-Style: audio -> style states
        if ckpt.style is not None:
            self.style = StyleConditioner(ckpt.style.settings, ckpt.style.tensors, ckpt.style.features, ckpt.source)

    @classmethod
    def load(
        cls,
        source: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: Progress | None = stderr_progress,
        exact: bool = False,
        precision: str = "float32",
        guidance: str = "auto",
        kv: str = "float32",
        codec: str = "float32",
    ) -> MusicGen:
        check_kv(kv, torch.device(device), exact)  # before minutes of loading
        check_codec_precision(codec, torch.device(device), exact)
        cache_kernels(kv, progress)  # built (once) or loaded now, with a word on the console
        cache_codec_kernels(codec, torch.device(device), progress)
        return cls(load_checkpoint(source, progress), device, dtype, exact, precision, guidance, kv, codec)

    @property
    def sample_rate(self) -> int:
        return self.spec.codec.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.spec.lm.audio_channels

    @property
    def melody(self) -> bool:
        """Whether this checkpoint is conditioned on melody (chroma) as well as text."""
        return self.chroma is not None

    def melody_condition(
        self, prompt: str | None, melody: torch.Tensor | None, guided: bool, chroma: torch.Tensor | None = None
    ) -> Condition:
        """A melody checkpoint's condition: text `prompt` (None: no text, as transformers runs it)
        and/or `melody` audio (channels, samples) at `chroma.settings.sample_rate` - or its one-hot
        `chroma` (frames, bins) computed already."""
        if self.chroma is None:
            raise ContextError(
                f"'{self.source}' has no melody conditioning "
                "(a MusicGen-Melody checkpoint has; this one takes text only)"
            )
        if prompt is None and melody is None and chroma is None:
            raise ContextError("give a text prompt, a melody, or both")
        if melody is not None:
            chroma = self.chroma(melody)
        return run(self.melody_condition_steps(prompt, chroma, guided))

    def melody_condition_steps(
        self, prompt: str | None, chroma: torch.Tensor | None, guided: bool
    ) -> Generator[None, None, Condition]:
        """`melody_condition` from one-hot `chroma` (or None), a T5 block per piece (a live stream
        runs it between steps)."""
        if self.chroma is None:
            raise ContextError(
                f"'{self.source}' has no melody conditioning "
                "(a MusicGen-Melody checkpoint has; this one takes text only)"
            )
        states = yield from prefix_states_steps(self.lm, self.conditioner, prompt, chroma, guided)
        return Condition(text=prompt or "", cross=None, tokens=states.shape[1], prefix=states)

    def style_states(
        self, audio: torch.Tensor, eval_q: int | None = None, excerpt_s: float | None = None
    ) -> torch.Tensor:
        """A MusicGen-Style checkpoint's style of `audio` (channels, samples) at the model's rate
        (its middle `excerpt_s` seconds; None: the checkpoint's) -> (1, frames, hidden), through
        `eval_q` of its quantizer's codebooks (None: the checkpoint's) - `StyleConditioner.tuned`."""
        return self._style().tuned(eval_q, excerpt_s)(audio)

    def style_condition(
        self,
        prompt: str | None,
        audio: torch.Tensor | None,
        guided: bool,
        double: bool = True,
        eval_q: int | None = None,
        excerpt_s: float | None = None,
    ) -> Condition:
        """A MusicGen-Style checkpoint's condition: text `prompt` (None: none) and the style of
        `audio` (None: no style; `eval_q`, `excerpt_s` as `style_states` takes them). `double`: with
        guidance, also a style-alone row, so that `cfg_beta` (double guidance) can be used."""
        states = None if audio is None else self.style_states(audio, eval_q, excerpt_s)
        return run(self.style_condition_steps(prompt, states, guided, double))

    def style_condition_steps(
        self, prompt: str | None, states: torch.Tensor | None, guided: bool, double: bool = True
    ) -> Generator[None, None, Condition]:
        """`style_condition` from style `states` computed already (`style_states`), a T5 block per
        piece (a live stream runs it between steps)."""
        self._style()
        rows = 1 if not guided else 3 if double else 2
        prefix = yield from style_prefix_steps(self.lm, self.conditioner, prompt, states, rows)
        return Condition(text=prompt or "", cross=None, tokens=prefix.shape[1], prefix=prefix)

    def _style(self) -> StyleConditioner:
        if self.style is None:
            raise ContextError(
                f"'{self.source}' has no style conditioning (a MusicGen-Style checkpoint has; this one does not)"
            )
        return self.style

    @property
    def max_columns(self) -> int:
        """The context window in LM columns (the position table's length)."""
        return self.spec.lm.max_positions

    @property
    def codebook_pattern(self) -> PatternSpec:
        """The codebook pattern the checkpoint was trained with (`engine.codebook_patterns`)."""
        return self.spec.lm.codebook_pattern

    def play_pattern(self, pattern: PatternSpec) -> None:
        """Play a built-in (random) model with another codebook pattern, for tests and benchmarks.
        A real checkpoint plays the pattern it was trained with, and only that."""
        from dataclasses import replace

        from .presets import BUILT_IN_MODELS

        if self.source not in BUILT_IN_MODELS:
            if pattern == self.codebook_pattern:
                return
            raise CheckpointError(
                f"'{self.source}' plays the codebook pattern it was trained with "
                f"('{self.codebook_pattern.describe()}'); another pattern is for built-in models"
            )
        if pattern.n_q != self.spec.lm.num_codebooks:
            raise CheckpointError(
                f"the pattern has {pattern.n_q} codebooks, '{self.source}' {self.spec.lm.num_codebooks}"
            )
        if self.spec.lm.prefix_conditioned and pattern.plain_delays is None:
            raise CheckpointError("melody and style models play delay patterns only")
        self.spec = replace(self.spec, lm=replace(self.spec.lm, pattern=pattern))
        self.pattern = DelayPattern(self.spec.lm.delays, self.spec.lm.special_token)

    @property
    def streams(self) -> bool:
        """Whether the streaming engine plays this checkpoint's pattern (the delay pattern);
        other patterns render (`engine.pattern_run`)."""
        return self.codebook_pattern.plain_delays is not None

    @property
    def max_frames(self) -> int:
        """The most frames one non-sliding run can hold (BOS and the pattern's tail included)."""
        if not self.streams:
            return max_frames_for(self.codebook_pattern, self.max_columns)
        return self.max_columns - 1 - self.pattern.max_delay

    # -- codec helpers that know the LM's codebook layout (stereo interleaves L/R codebooks) ----
    def codes_to_codec(self, codes: torch.Tensor) -> torch.Tensor:
        """LM codes (K, F) -> codec batch (channels, K / channels, F)."""
        ch = self.audio_channels
        return codes.view(codes.shape[0] // ch, ch, codes.shape[-1]).transpose(0, 1)

    def codec_to_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec batch (channels, K / channels, F) -> LM codes (K, F)."""
        ch, kc, f = codes.shape
        return codes.transpose(0, 1).reshape(ch * kc, f)

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (channels, samples) at the model rate -> LM codes (K, frames)."""
        if audio.shape[0] != self.audio_channels:
            raise ValueError(f"expected {self.audio_channels} channel(s), got {audio.shape[0]}")
        codes = self.codec.encode(audio.to(self.device).unsqueeze(1))  # channels as the batch
        return self.codec_to_codes(codes)


def _build_t5(ckpt: Checkpoint) -> torch.nn.Module:
    """The text encoder, built the way transformers builds MusicGen's, weights assigned (no init)."""
    from transformers import AutoModelForTextEncoding

    sd = {k[len("text_encoder.") :]: v for k, v in ckpt.tensors.items() if k.startswith("text_encoder.")}
    shared = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if shared is None:
        raise CheckpointError(f"checkpoint '{ckpt.source}' has no text encoder weights")
    sd.setdefault("shared.weight", shared)
    sd.setdefault("encoder.embed_tokens.weight", shared)
    with torch.device("meta"):
        t5 = AutoModelForTextEncoding.from_config(ckpt.hf_config.text_encoder)
    t5.load_state_dict(sd, strict=False, assign=True)
    t5.tie_weights() if hasattr(t5, "tie_weights") else None
    leftover = [n for n, p in list(t5.named_parameters()) + list(t5.named_buffers()) if p.is_meta]
    if leftover:
        raise CheckpointError(f"checkpoint '{ckpt.source}' lacks text encoder weights (e.g. {leftover[0]})")
    return t5.eval()


def model_summary(model: MusicGen) -> dict[str, Any]:
    s = model.spec
    return {
        "source": model.source,
        "hidden": s.lm.hidden,
        "layers": s.lm.layers,
        "heads": s.lm.heads,
        "codebooks": s.lm.num_codebooks,
        "channels": s.lm.audio_channels,
        "sample_rate": s.codec.sample_rate,
        "frame_rate": s.codec.frame_rate,
        "max_frames": model.max_frames,
        "pattern": model.codebook_pattern.describe(),
        "melody": model.melody,
        "style": model.style is not None,
        "precision": "float32 (exact)" if model.lm.exact else model.lm.precision,
        "guidance": model.guidance,
    }
