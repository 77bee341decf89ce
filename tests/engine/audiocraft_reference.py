"""audiocraft itself as a test reference: random MusicGen models built with its own builders and
exported in its own checkpoint format, then run with its own `LMModel.generate` / `EncodecModel.decode`.

audiocraft 1.3.0 (PyPI) is installed for the tests only (scripts/setup.sh). Two things it needs are
not on a CPU machine and are stood in for here, nowhere else:
- xformers: `audiocraft.modules.transformer` imports `xformers.ops` at module level; with its default
  torch backend it touches two names: `unbind` (torch.unbind's twin) and `LowerTriangularMask`, whose
  instance only marks "causal" for torch's SDPA; `memory_efficient_attention` belongs to the
  xformers backend and fails loudly if ever reached;
- the T5 weights: its T5 conditioner loads a named T5 from the hub; a small random T5 of the width
  that name has (t5-small: 512) and a byte tokenizer take its place.
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch

T5_NAME = "t5-small"  # audiocraft sizes the text projection by name: t5-small is 512 wide
T5_TINY = dict(vocab_size=384, d_model=512, d_kv=8, d_ff=64, num_layers=1, num_heads=4)


def import_audiocraft() -> Any:
    """The `audiocraft` package, importable on a CPU machine; None where it is not installed."""
    if "xformers" not in sys.modules:
        xformers = types.ModuleType("xformers")
        ops = types.ModuleType("xformers.ops")
        ops.unbind = torch.unbind  # type: ignore[attr-defined]
        ops.memory_efficient_attention = _xformers_only  # type: ignore[attr-defined]
        ops.LowerTriangularMask = type("LowerTriangularMask", (), {})  # type: ignore[attr-defined]
        xformers.ops = ops  # type: ignore[attr-defined]
        sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, ops
    try:
        import audiocraft.models.builders
        import audiocraft.modules.conditioners
    except ImportError:
        return None
    return audiocraft


def _xformers_only(*args: object, **kwargs: object) -> None:
    raise AssertionError("audiocraft took its xformers backend in a test; the reference runs the torch one")


def lm_config(
    dim: int = 64, layers: int = 2, heads: int = 4, n_q: int = 4, card: int = 2048, channels: int = 1
) -> dict[str, Any]:
    """An audiocraft MusicGen training config (musicgen_lm.yaml + text2music.yaml, as exported)."""
    return dict(
        device="cpu",
        dtype="float32",
        sample_rate=32000,
        channels=channels,
        dataset=dict(segment_duration=30.0),
        lm_model="transformer_lm",
        codebooks_pattern=dict(
            modeling="delay", delay=dict(delays=[k // channels for k in range(n_q)], flatten_first=0, empty_initial=0)
        ),
        transformer_lm=dict(
            dim=dim,
            num_heads=heads,
            num_layers=layers,
            hidden_scale=4,
            n_q=n_q,
            card=card,
            dropout=0.0,
            emb_lr=None,
            activation="gelu",
            norm_first=True,
            bias_ff=False,
            bias_attn=False,
            bias_proj=False,
            past_context=None,
            causal=True,
            custom=False,
            memory_efficient=True,
            attention_as_float32=False,
            layer_scale=None,
            positional_embedding="sin",
            xpos=False,
            checkpointing="none",
            weight_init="gaussian",
            depthwise_init="current",
            zero_bias_init=True,
            norm="layer_norm",
            cross_attention=False,
            qk_layer_norm=False,
            qk_layer_norm_cross=False,
            attention_dropout=None,
            kv_repeat=1,
            two_step_cfg=False,
        ),  # fmt: skip
        classifier_free_guidance=dict(training_dropout=0.3, inference_coef=3.0),
        attribute_dropout={},
        fuser=dict(
            cross_attention_pos_emb=False,
            cross_attention_pos_emb_scale=1,
            sum=[],
            prepend=[],
            cross=["description"],
            input_interpolate=[],
        ),  # fmt: skip
        conditioners=dict(
            description=dict(model="t5", t5=dict(name=T5_NAME, finetune=False, word_dropout=0.3, normalize_text=False))
        ),
        interleave_stereo_codebooks=dict(use=channels == 2, per_timestep=False),
    )


def codec_config(n_q: int = 4, bins: int = 2048, n_filters: int = 16, pad_mode: str = "constant") -> dict[str, Any]:
    """An audiocraft EnCodec config (encodec/default.yaml + encodec_large_nq4_s640.yaml, slimmed)."""
    return dict(
        device="cpu",
        sample_rate=32000,
        channels=1,
        compression_model="encodec",
        encodec=dict(
            autoencoder="seanet",
            quantizer="rvq",
            sample_rate="${sample_rate}",
            channels="${channels}",
            causal=False,
            renormalize=False,
        ),  # fmt: skip
        seanet=dict(
            dimension=64,
            channels="${channels}",
            causal="${encodec.causal}",
            n_filters=n_filters,
            n_residual_layers=1,
            ratios=[8, 5, 4, 4],
            activation="ELU",
            activation_params={"alpha": 1.0},
            norm="weight_norm",
            norm_params={},
            kernel_size=7,
            residual_kernel_size=3,
            last_kernel_size=7,
            dilation_base=2,
            pad_mode=pad_mode,
            true_skip=True,
            compress=2,
            lstm=2,
            disable_norm_outer_blocks=0,
            decoder=dict(trim_right_ratio=1.0, final_activation=None, final_activation_params=None),
            encoder={},
        ),  # fmt: skip
        rvq=dict(
            n_q=n_q,
            q_dropout=False,
            bins=bins,
            decay=0.99,
            kmeans_init=True,
            kmeans_iters=50,
            threshold_ema_dead_code=2,
            orthogonal_reg_weight=0.0,
            orthogonal_reg_active_codes_only=False,
        ),  # fmt: skip
    )


def random_t5() -> tuple[Any, Any]:
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(11)
    return T5EncoderModel(T5Config(**T5_TINY)).eval(), ByT5Tokenizer()


def build_lm(ac: Any, cfg: dict[str, Any], seed: int, t5: tuple[Any, Any]) -> Any:
    """A random audiocraft LMModel from `cfg`, its T5 conditioner given `t5` instead of a download."""
    from omegaconf import OmegaConf

    model, tokenizer = t5
    cond = ac.modules.conditioners
    saved = cond.T5EncoderModel, cond.T5Tokenizer
    cond.T5EncoderModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: model)
    cond.T5Tokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: tokenizer)
    try:
        torch.manual_seed(seed)
        lm = ac.models.builders.get_lm_model(OmegaConf.create(cfg)).eval()
    finally:
        cond.T5EncoderModel, cond.T5Tokenizer = saved
    return lm


@torch.no_grad()
def build_codec(ac: Any, cfg: dict[str, Any], seed: int) -> Any:
    """A random audiocraft EncodecModel; its codebooks drawn at random (k-means would learn them)."""
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # audiocraft 1.3 builds its convolutions with the old weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        codec = ac.models.builders.get_compression_model(OmegaConf.create(cfg)).eval()
    for layer in codec.quantizer.vq.layers:
        layer._codebook.embed.copy_(torch.randn_like(layer._codebook.embed))
        layer._codebook.inited.fill_(1.0)
    return codec


def export(
    directory: Path, lm: Any, lm_cfg: dict[str, Any], codec: Any, codec_cfg: dict[str, Any], t5: tuple[Any, Any]
) -> Path:
    """Write the checkpoint as audiocraft's `utils.export` does, plus the T5 in `text_encoder/`."""
    from omegaconf import OmegaConf

    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"best_state": lm.state_dict(), "xp.cfg": OmegaConf.to_yaml(lm_cfg), "exported": True},
               directory / "state_dict.bin")  # fmt: skip
    torch.save({"best_state": codec.state_dict(), "xp.cfg": OmegaConf.to_yaml(codec_cfg), "exported": True},
               directory / "compression_state_dict.bin")  # fmt: skip
    t5[0].save_pretrained(directory / "text_encoder")
    t5[1].save_pretrained(directory / "text_encoder")
    return directory


@torch.no_grad()
def generate(
    ac: Any, lm: Any, prompt: str, frames: int, cfg: float, two_step: bool = False, prompt_codes: Any = None
) -> torch.Tensor:
    """audiocraft's greedy codes (K, frames) for `prompt`, as `MusicGen.generate` calls its LM.
    audiocraft's two-step path guides with the model's own coefficient, so it is set too."""
    attrs = ac.modules.conditioners.ConditioningAttributes(text={"description": prompt})
    lm.cfg_coef = cfg
    total = frames + (0 if prompt_codes is None else prompt_codes.shape[-1])
    codes = lm.generate(
        prompt=None if prompt_codes is None else prompt_codes[None],
        conditions=[attrs],
        max_gen_len=total,
        use_sampling=False,
        cfg_coef=cfg,
        two_step_cfg=two_step,
    )
    return codes[0]


def step_logits(ac: Any, lm: Any, prompt: str, frames: int, cfg: float, two_step: bool) -> list[torch.Tensor]:
    """The raw logits of every step of `generate`, conditional row then unconditional, (2, K, V)."""
    seen: list[torch.Tensor] = []
    hook = lm.register_forward_hook(lambda _m, _i, out: seen.append(out[..., -1, :].clone()))
    try:
        generate(ac, lm, prompt, frames, cfg, two_step=two_step)
    finally:
        hook.remove()
    if two_step:  # one forward per kind of row: (cond, uncond) pairs
        return [torch.cat(seen[i : i + 2]) for i in range(0, len(seen), 2)]
    return seen
