"""audiocraft's MusicGen-Style, as a test reference.

MusicGen-Style came to audiocraft after its last PyPI release (1.3.0, the one the tests install):
the style conditioner and double guidance exist only in its GitHub sources. The parts 1.3.0 lacks
are reproduced below *verbatim* from audiocraft at commit 896ec7c47f5e5d1e5aa1e4b260c4405328bf009d
(`audiocraft/modules/conditioners.py`: `FeatureExtractor`, `StyleConditioner`,
`_drop_description_condition`; `audiocraft/models/lm.py`: the `cfg_coef_beta` branches of
`generate` and `_sample_next_token`), on top of 1.3.0's own classes (`WaveformConditioner`,
`StreamingTransformer`, `ResidualVectorQuantizer`, `ConditioningProvider`, `LMModel`), which the
newer code builds on unchanged. Copied code is marked; only the imports and our linter's spelling
of type hints are adapted, and a training branch that needs `flashy`'s distributed averaging is
cut. audiocraft is MIT-licensed:

    Copyright (c) Meta Platforms, Inc. and affiliates.
    Permission is hereby granted, free of charge, to any person obtaining a copy of this software
    and associated documentation files (the "Software"), to deal in the Software without
    restriction, [...] subject to the following conditions: The above copyright notice and this
    permission notice shall be included in all copies or substantial portions of the Software.

MERT (`m-a-p/MERT-v1-95M`, loaded by audiocraft from the hub with its own code) is stood in for by a
small random HuBERT - the architecture MERT extends - 768 wide at 75 frames a second, given to the
reference and saved in the exported checkpoint's `mert/` for our loader alike.
"""

from __future__ import annotations

import random
import types
import typing as tp
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import audiocraft_reference as ref

COMMIT = "896ec7c47f5e5d1e5aa1e4b260c4405328bf009d"


def random_mert(seed: int = 5) -> Any:
    """A small random HuBERT with MERT's interface: 24 kHz in, 75 frames a second of 768 out."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return HubertModel(config).eval()


def style_classes(ac: Any, mert: Any) -> tuple[type, type]:
    """(FeatureExtractor, StyleConditioner) as audiocraft defines them, MERT given as `mert`."""
    cond = ac.modules.conditioners
    WaveformConditioner, WavCondition = cond.WaveformConditioner, cond.WavCondition
    StreamingTransformer = ac.modules.transformer.StreamingTransformer
    ResidualVectorQuantizer = ac.quantization.ResidualVectorQuantizer
    TorchAutocast = ac.utils.autocast.TorchAutocast
    convert_audio = ac.data.audio_utils.convert_audio
    length_to_mask = ac.utils.utils.length_to_mask
    ConditionType = tuple[torch.Tensor, torch.Tensor]
    AutoModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: mert)

    # ---- copied from audiocraft@896ec7c audiocraft/modules/conditioners.py ----------------------
    # fmt: off
    class FeatureExtractor(WaveformConditioner):
        def __init__(
            self, model_name: str,
            sample_rate: int, encodec_checkpoint: str, encodec_n_q: int, length: float,
            dim: int, output_dim: int, device: torch.device | str,
            compute_mask: bool = True,
            use_middle_of_segment: bool = False, ds_rate_compression: int = 640,
            num_codebooks_lm: int = 4
        ):
            assert model_name in ['encodec', 'mert']
            if model_name == 'encodec':
                raise NotImplementedError("the reference stands in MERT only")
            elif model_name == 'mert':
                feat_extractor = AutoModel.from_pretrained("m-a-p/MERT-v1-95M", trust_remote_code=True)
            super().__init__(
                dim=dim,
                output_dim=output_dim,
                device=device
            )
            self.sample_rate = sample_rate
            self.compute_mask = compute_mask
            self.feat_extractor: nn.Module
            self.embed: nn.ModuleList | nn.Linear
            if model_name == 'mert':
                self.__dict__["feat_extractor"] = feat_extractor.eval().to(device)
                self.embed = nn.Linear(768, dim)  # hardcoded
            self.length_subwav = int(length * sample_rate)
            self.ds_rate_compression = ds_rate_compression
            self.model_name = model_name
            self.use_middle_of_segment = use_middle_of_segment
            self.num_codebooks_lm = num_codebooks_lm

        def _get_wav_embedding(self, x: WavCondition) -> torch.Tensor:
            if x.wav.shape[-1] == 1:
                self.temp_mask = None
                return torch.zeros(x.wav.shape[0], 1, self.dim, device=self.device)
            else:
                with torch.no_grad():
                    if self.use_middle_of_segment:
                        start = int((x.wav.shape[-1] - self.length_subwav) / 2)
                        wav = x.wav[:, :, start:start+self.length_subwav]
                    else:
                        start = random.randint(0, x.wav.shape[-1] - self.length_subwav)
                        wav = x.wav[:, :, start:start+self.length_subwav]
                    if self.compute_mask:
                        self.temp_mask = self._get_mask_wav(x, start)
                    if self.model_name == 'encodec':
                        tokens = self.feat_extractor.encode(wav)[0]  # type: ignore
                    elif self.model_name == 'mert':
                        wav = convert_audio(wav, from_rate=x.sample_rate[0], to_rate=24000, to_channels=1)
                        embeds = self.feat_extractor(wav.squeeze(-2)).last_hidden_state
                if self.model_name == 'encodec':
                    tokens = tokens[:, :self.encodec_n_q]
                    embeds = sum([self.embed[k](tokens[:, k]) for k in range(self.encodec_n_q)])  # type: ignore
                else:
                    embeds = self.embed(embeds)

                return embeds  # [B, T, dim]

        def _downsampling_factor(self):
            if self.model_name == 'encodec':
                return self.sample_rate / self.feat_extractor.frame_rate
            elif self.model_name == 'mert':
                return self.sample_rate / 75

        def _get_mask_wav(self, x: WavCondition, start: int) -> torch.Tensor | None:
            if x.wav.shape[-1] == 1:
                return None
            total_length = int(x.wav.shape[-1] / self.ds_rate_compression)
            mask_length = int(self.length_subwav / self.ds_rate_compression)
            start = int(start / self.ds_rate_compression)
            mask = torch.ones(x.wav.shape[0], self.num_codebooks_lm,
                              total_length, device=self.device, dtype=torch.bool)
            mask[:, :, start:start+mask_length] = 0
            return mask

    class StyleConditioner(FeatureExtractor):
        def __init__(self, transformer_scale: str = 'default', ds_factor: int = 15, encodec_n_q: int = 4,
                     n_q_out: int = 6, eval_q: int = 3, q_dropout: bool = True, bins: int = 1024,
                     varying_lengths: list[float] = [1.5, 4.5],  # noqa: B006
                     batch_norm: bool = True, rvq_threshold_ema_dead_code: float = 0.1,
                     **kwargs):
            tr_args: dict[str, tp.Any]
            if transformer_scale == 'xsmall':
                tr_args = {'d_model': 256, 'num_heads': 8, 'num_layers': 4}
            elif transformer_scale == 'large':
                tr_args = {'d_model': 1024, 'num_heads': 16, 'num_layers': 24}
            elif transformer_scale == 'default':
                tr_args = {'d_model': 512, 'num_heads': 8, 'num_layers': 8}
            elif transformer_scale == 'none':
                tr_args = {'d_model': 512}
            tr_args.update({
                'memory_efficient': True, 'activation': 'gelu',
                'norm_first': True, 'causal': False, 'layer_scale': None,
                'bias_ff': False, 'bias_attn': False,
            })
            dim = tr_args['d_model']
            super().__init__(dim=dim, encodec_n_q=encodec_n_q, **kwargs)

            self.ds_factor = ds_factor
            if transformer_scale == 'none':
                self.transformer = None
            else:
                self.transformer = StreamingTransformer(dim_feedforward=int(4 * dim), **tr_args)
            self.n_q_out = n_q_out
            self.eval_q = eval_q
            self.rvq = None
            if n_q_out > 0:
                self.rvq = ResidualVectorQuantizer(dim, n_q=n_q_out, q_dropout=q_dropout, bins=bins,
                                                   threshold_ema_dead_code=rvq_threshold_ema_dead_code)
            self.autocast = TorchAutocast(enabled=self.device != 'cpu', device_type=self.device, dtype=torch.float32)
            self.varying_lengths = varying_lengths
            self.batch_norm = None
            if batch_norm:
                self.batch_norm = nn.BatchNorm1d(dim, affine=False)
            self.mask = None

        def _get_wav_embedding(self, wav: WavCondition) -> torch.Tensor:
            with self.autocast:
                # Sample the length of the excerpts
                if self.varying_lengths and self.training:
                    assert len(self.varying_lengths) == 2
                    length = random.uniform(self.varying_lengths[0], self.varying_lengths[1])
                    self.length_subwav = int(length * self.sample_rate)
                z1 = super()._get_wav_embedding(wav)
                if self.compute_mask:
                    self.mask = self.temp_mask  # type: ignore
                self.temp_mask = None

                if self.transformer is not None:
                    out1 = self.transformer(z1)
                else:
                    out1 = z1
                if self.batch_norm:
                    out1 = self.batch_norm(out1.transpose(1, 2)).transpose(1, 2)
                # Apply quantization
                if self.rvq:
                    if self.training:
                        self.rvq.set_num_codebooks(self.n_q_out)
                    else:
                        self.rvq.set_num_codebooks(self.eval_q)
                    out1 = self.rvq(out1.transpose(1, 2), frame_rate=1.)
                    # (training only: flashy.distrib.average_tensors(self.rvq.buffers()) - cut here)
                    out1 = out1.x.transpose(1, 2)
                # Apply fix downsample
                out1 = out1[:, ::self.ds_factor]

            return out1

        def set_params(self, eval_q: int = 3,
                       excerpt_length: float = 3.0,
                       ds_factor: int | None = None, encodec_n_q: int | None = None):
            self.eval_q = eval_q
            self.length_subwav = int(excerpt_length * self.sample_rate)
            if ds_factor is not None:
                self.ds_factor = ds_factor
            if encodec_n_q is not None:
                self.encodec_n_q = encodec_n_q

        def _downsampling_factor(self):
            df = super()._downsampling_factor()
            return df * self.ds_factor

        def forward(self, x: WavCondition) -> ConditionType:
            wav, lengths, *_ = x

            embeds = self._get_wav_embedding(x)
            embeds = embeds.to(self.output_proj.weight)
            embeds = self.output_proj(embeds)

            lengths = lengths / self._downsampling_factor()
            mask = length_to_mask(lengths, max_len=embeds.shape[1]).int()  # type: ignore

            embeds = (embeds * mask.unsqueeze(2).to(self.device))

            return embeds, mask
    # fmt: on
    # ---- end of copy -----------------------------------------------------------------------------

    return FeatureExtractor, StyleConditioner


def drop_description(ac: Any, conditions: list[Any]) -> list[Any]:
    """audiocraft@896ec7c `_drop_description_condition` (copied)."""
    AttributeDropout = ac.modules.conditioners.AttributeDropout
    # fmt: off
    for condition in conditions:
        assert 'description' in condition.text.keys()
        assert 'self_wav' in condition.wav.keys()
    return AttributeDropout(p={'text': {'description': 1.0},
                               'wav': {'self_wav': 0.0}})(conditions)
    # fmt: on


def style_config(
    dim: int = 64, layers: int = 2, heads: int = 4, excerpt_s: float = 3.0, scale: str = "xsmall", eval_q: int = 3
) -> dict[str, Any]:
    """A MusicGen-Style training config (musicgen_style_32khz.yaml + style2music.yaml, slimmed)."""
    cfg = ref.lm_config(dim=dim, layers=layers, heads=heads)
    cfg["fuser"] = dict(cross_attention_pos_emb=False, cross_attention_pos_emb_scale=1, sum=[],
                        prepend=["self_wav", "description"], cross=[], input_interpolate=[])  # fmt: skip
    # fmt: off
    cfg["conditioners"]["self_wav"] = dict(
        model="style",
        style=dict(
            model_name="mert", transformer_scale=scale, sample_rate="${sample_rate}",
            encodec_checkpoint="//pretrained/facebook/encodec_32khz", encodec_n_q=3, length=excerpt_s,
            ds_factor=15, n_q_out=6, eval_q=eval_q, q_dropout=True, bins=1024, varying_lengths=[1.5, 4.5],
            batch_norm=True, compute_mask=True, num_codebooks_lm="${transformer_lm.n_q}",
            ds_rate_compression=640, use_middle_of_segment=True, rvq_threshold_ema_dead_code=0.1,
        ),
    )
    # fmt: on
    return cfg


@torch.no_grad()
def build_style_lm(ac: Any, cfg: dict[str, Any], seed: int, t5: tuple[Any, Any], mert: Any) -> Any:
    """A random audiocraft MusicGen-Style LMModel; its style quantizer and batch norm given learnt-
    looking statistics (random codebooks, a spread of running means and variances)."""
    from omegaconf import OmegaConf

    _, StyleConditioner = style_classes(ac, mert)
    builders = ac.models.builders
    original = builders.get_conditioner_provider

    def provider(output_dim: int, config: Any) -> Any:
        text_only = OmegaConf.to_container(config, resolve=True)
        style = text_only["conditioners"].pop("self_wav")
        made = original(output_dim, OmegaConf.create(text_only))
        made.conditioners["self_wav"] = StyleConditioner(output_dim=output_dim, device="cpu", **style["style"])
        return made

    builders.get_conditioner_provider = provider
    try:
        lm = ref.build_lm(ac, cfg, seed, t5)
    finally:
        builders.get_conditioner_provider = original
    style = lm.condition_provider.conditioners["self_wav"]
    for layer in style.rvq.vq.layers:
        layer._codebook.embed.copy_(torch.randn_like(layer._codebook.embed))
        layer._codebook.inited.fill_(1.0)
    style.batch_norm.running_mean.copy_(torch.randn_like(style.batch_norm.running_mean) * 0.1)
    style.batch_norm.running_var.copy_(torch.rand_like(style.batch_norm.running_var) + 0.5)
    return lm.eval()


def export_style(directory: Path, lm: Any, cfg: dict[str, Any], codec: Any, codec_cfg: dict[str, Any],
                 t5: tuple[Any, Any], mert: Any) -> Path:  # fmt: skip
    """`audiocraft_reference.export`, and MERT's stand-in in `mert/` (as a user would put MERT)."""
    ref.export(directory, lm, cfg, codec, codec_cfg, t5)
    mert.save_pretrained(directory / "mert")
    return directory


def style_attributes(ac: Any, prompt: str | None, wav: torch.Tensor | None) -> Any:
    """One `ConditioningAttributes` as `MusicGen.generate_with_style` makes it: the prompt, and the
    style audio (samples,) at 32 kHz - or a null one."""
    cond = ac.modules.conditioners
    if wav is None:
        self_wav = cond.WavCondition(torch.zeros((1, 1, 1)), torch.tensor([0]), sample_rate=[32000],
                                     path=[None], seek_time=[None])  # fmt: skip
    else:
        self_wav = cond.WavCondition(wav[None, None], torch.tensor([wav.shape[-1]]), sample_rate=[32000],
                                     path=[None], seek_time=[None])  # fmt: skip
    return cond.ConditioningAttributes(text={"description": prompt}, wav={"self_wav": self_wav})


@torch.no_grad()
def generate_style(
    ac: Any, lm: Any, prompt: str | None, wav: torch.Tensor | None, frames: int, cfg: float, beta: float | None
) -> torch.Tensor:
    """audiocraft@896ec7c's greedy codes (K, frames) for text and style: 1.3.0's `LMModel.generate`
    with the newer `cfg_coef_beta` branches put in where they go (copied below)."""
    lm_module = ac.models.lm
    attrs = [style_attributes(ac, prompt, wav)]
    saved_dropout, saved_sample = lm_module.ClassifierFreeGuidanceDropout, lm._sample_next_token

    if beta is not None:
        # generate, cfg_coef_beta branch: conditions + wav_conditions + null_conditions
        def three_rows(p: float) -> Any:
            null = saved_dropout(p=p)
            return lambda conditions: drop_description(ac, conditions) + null(conditions)

        lm_module.ClassifierFreeGuidanceDropout = three_rows

        def sample_next_token(sequence, cfg_conditions, unconditional_state, use_sampling=False, temp=1.0,
                              top_k=0, top_p=0.0, cfg_coef=None, two_step_cfg=None):  # fmt: skip
            # ---- copied from audiocraft@896ec7c audiocraft/models/lm.py (_sample_next_token) ----
            # fmt: off
            B = sequence.shape[0]
            cfg_coef = lm.cfg_coef if cfg_coef is None else cfg_coef
            model = lm if lm._fsdp is None else lm._fsdp
            cfg_coef_beta = beta
            if cfg_coef_beta is not None:
                assert isinstance(cfg_conditions, dict)
                condition_tensors = cfg_conditions
                if condition_tensors:
                    # Preparing for CFG, predicting conditional text and style, conditional style
                    # and unconditional
                    sequence = torch.cat([sequence, sequence, sequence], dim=0)
                all_logits = model(
                    sequence,
                    conditions=[], condition_tensors=condition_tensors)
                if condition_tensors:
                    cond_logits, wav_logits, uncond_logits = all_logits.split(B, dim=0)  # [B, K, T, card]
                    logits = uncond_logits + cfg_coef * (
                        wav_logits + cfg_coef_beta * (cond_logits - wav_logits) - uncond_logits
                        )
            logits = logits.permute(0, 1, 3, 2)  # [B, K, card, T]
            logits = logits[..., -1]  # [B x K x card]
            next_token = torch.argmax(logits, dim=-1, keepdim=True)
            return next_token
            # fmt: on
            # ---- end of copy ------------------------------------------------------------------

        lm._sample_next_token = sample_next_token
    try:
        lm.cfg_coef = cfg
        codes = lm.generate(conditions=attrs, max_gen_len=frames, use_sampling=False, cfg_coef=cfg)
    finally:
        lm_module.ClassifierFreeGuidanceDropout = saved_dropout
        lm._sample_next_token = saved_sample
    return codes[0]


@torch.no_grad()
def style_states(ac: Any, lm: Any, wav: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """The style conditioner's output (embeds after masking) for `wav` alone in a batch of `rows`
    identical rows: (rows, frames, dim)."""
    attrs = [style_attributes(ac, None, wav) for _ in range(rows)]
    provider = lm.condition_provider
    tokenized = provider.tokenize(attrs)
    embeds, _ = provider.conditioners["self_wav"](tokenized["self_wav"])
    return embeds
