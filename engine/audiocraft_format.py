"""MusicGen checkpoints in audiocraft's own format, translated into the transformers layout.

audiocraft (Meta's training code, where fine-tuned MusicGens come from) exports a model as two files:
- `state_dict.bin`: {'xp.cfg': the training config as YAML, 'best_state': the LM's state dict, the text
  conditioner's projection included};
- `compression_state_dict.bin`: either a pointer to a published codec ({'pretrained':
  'facebook/encodec_32khz'}) or an EnCodec of its own ({'xp.cfg', 'best_state'}).
The text encoder is not in either file: the config names it ('t5-base') and audiocraft fetches it.
A MusicGen-Style checkpoint adds a style conditioner (`engine.style`) to the LM's state dict and
names MERT, which is not in the files either.

Everything is renamed into the keys and config objects a transformers checkpoint has, so the rest of
the engine reads one layout. Where the parts that are not in the files come from, in order:
- the T5: a `text_encoder/` folder inside the checkpoint (`save_pretrained` of the T5 and its
  tokenizer), else the hub id its config names (`t5-base` is `google-t5/t5-base`);
- a codec pointer: an `audio_encoder/` folder inside the checkpoint (`save_pretrained` of the
  EnCodec), else the hub id it names;
- MERT (style checkpoints): a `mert/` folder inside the checkpoint, else `m-a-p/MERT-v1-95M`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .codebook_patterns import PatternError, PatternSpec
from .errors import CheckpointError
from .style import MERT_DIR, MERT_HUB_ID, StyleParts, StyleSettings, load_features
from .weightfiles import read_weights

Progress = Callable[[str], None]
Tensors = dict[str, torch.Tensor]

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
TEXT_ENCODER_DIR = "text_encoder"
CODEC_DIR = "audio_encoder"
_STYLE_PREFIX = "condition_provider.conditioners.self_wav."

# audiocraft names the T5 by its old short id; these are the hub ids today
_T5_HUB_IDS = {f"t5-{size}": f"google-t5/t5-{size}" for size in ("small", "base", "large", "3b", "11b")}

# audiocraft LM key -> transformers key (applied in order; `in_proj_weight` is split afterwards)
_LM_RENAMES: list[tuple[str, str]] = [
    (r"^emb\.(\d+)\.weight$", r"decoder.model.decoder.embed_tokens.\1.weight"),
    (r"^linears\.(\d+)\.weight$", r"decoder.lm_heads.\1.weight"),
    (r"^out_norm\.", "decoder.model.decoder.layer_norm."),
    (r"^condition_provider\.conditioners\.description\.output_proj\.", "enc_to_dec_proj."),
    (r"^transformer\.layers\.(\d+)\.", r"decoder.model.decoder.layers.\1."),
    (r"\.cross_attention\.", ".encoder_attn."),
    (r"\.norm1\.", ".self_attn_layer_norm."),
    (r"\.norm_cross\.", ".encoder_attn_layer_norm."),
    (r"\.norm2\.", ".final_layer_norm."),
    (r"\.linear1\.", ".fc1."),
    (r"\.linear2\.", ".fc2."),
]
_LM_KEY = re.compile(
    r"^(emb\.\d+\.weight|linears\.\d+\.weight|out_norm\.(weight|bias)"
    r"|condition_provider\.conditioners\.description\.output_proj\.(weight|bias)"
    r"|transformer\.layers\.\d+\.(self_attn|cross_attention)\.(in_proj_weight|out_proj\.weight)"
    r"|transformer\.layers\.\d+\.(norm1|norm2|norm_cross)\.(weight|bias)"
    r"|transformer\.layers\.\d+\.(linear1|linear2)\.weight)$"
)

# audiocraft EnCodec (SEANet + RVQ) key -> transformers EncodecModel key
_CODEC_RENAMES: list[tuple[str, str]] = [
    (r"^(encoder|decoder)\.model\.", r"audio_encoder.\1.layers."),
    (r"\.conv\.conv\.", ".conv."),
    (r"\.convtr\.convtr\.", ".conv."),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"audio_encoder.quantizer.layers.\1.codebook."),
]

# what our decoder runs: audiocraft's MusicGen LM settings (anything else is refused by name)
_LM_MUST = {
    "norm_first": True,
    "positional_embedding": "sin",
    "bias_ff": False,
    "bias_attn": False,
    "bias_proj": False,
    "activation": "gelu",
    "norm": "layer_norm",
    "layer_scale": None,
    "qk_layer_norm": False,
    "qk_layer_norm_cross": False,
    "kv_repeat": 1,
    "past_context": None,
    "causal": True,
}
_SEANET_MUST = {
    "activation": "ELU",
    "norm": "weight_norm",
    "disable_norm_outer_blocks": 0,
}


def is_audiocraft_directory(path: Path) -> bool:
    return (path / LM_FILE).is_file() and not (path / "config.json").is_file()


@dataclass(frozen=True)
class AudiocraftCheckpoint:
    """What an audiocraft checkpoint directory holds, in the transformers layout where one exists."""

    config: Any  # transformers MusicgenConfig
    tensors: Tensors  # transformers keys, weight norm not yet baked
    tokenizer: Any
    two_step_cfg: bool  # trained to run guidance as two forwards
    pattern: PatternSpec  # its codebook pattern
    style: StyleParts | None  # MusicGen-Style: its style conditioner


def load_audiocraft_directory(path: Path, source: str, say: Progress) -> AudiocraftCheckpoint:
    """Read an audiocraft checkpoint directory (a text or a style checkpoint)."""
    from transformers import MusicgenConfig

    from .presets import quiet_transformers

    quiet_transformers()
    say(f"loading {source}: audiocraft format ({LM_FILE}, {CODEC_FILE})")
    lm_pkg = _read_package(path / LM_FILE, source)
    cfg = _config(lm_pkg, path / LM_FILE)
    pattern = _check_lm_config(cfg, source)
    lm = cfg["transformer_lm"]
    dim = int(lm["dim"])
    state = dict(lm_pkg["best_state"])
    style_state = {k[len(_STYLE_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(_STYLE_PREFIX)}
    style = _style(path, cfg, style_state, source, say)
    tensors = lm_tensors(state, dim, source)
    t5_config, t5_tensors, tokenizer = _text_encoder(path, cfg["conditioners"]["description"]["t5"]["name"], say)
    proj = tensors.get("enc_to_dec_proj.weight")
    if proj is None or proj.shape[1] != t5_config.d_model:
        raise CheckpointError(
            f"'{source}': its text projection expects a {proj.shape[1] if proj is not None else '?'}-wide text "
            f"encoder, but the T5 found is {t5_config.d_model} wide"
        )
    tensors.update(t5_tensors)
    codec_config, codec_tensors = _codec(path, source, say)
    tensors.update(codec_tensors)
    config = MusicgenConfig(
        text_encoder=t5_config.to_dict(),
        audio_encoder=codec_config.to_dict(),
        decoder=_decoder_config(cfg).to_dict(),
    )
    if style is not None and pattern.plain_delays is None:
        raise CheckpointError(
            f"'{source}': a style checkpoint plays the delay pattern only, not '{pattern.describe()}'"
        )
    return AudiocraftCheckpoint(config, tensors, tokenizer, bool(lm.get("two_step_cfg", False)), pattern, style)


# -- packages and configs ----------------------------------------------------------------------


def _read_package(file: Path, source: str) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(f"'{source}' is an audiocraft checkpoint without '{file.name}'")
    try:
        pkg = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors for damaged files, or pickled objects we do not unpickle
        raise CheckpointError(
            f"'{file}' could not be read as an exported audiocraft checkpoint ({type(e).__name__}: {e}); "
            "a training checkpoint (checkpoint.th) must be exported first (audiocraft.utils.export)"
        ) from None
    if not isinstance(pkg, dict):
        raise CheckpointError(f"'{file}' is not an audiocraft checkpoint (it holds a {type(pkg).__name__})")
    return pkg


def _config(pkg: dict[str, Any], file: Path) -> dict[str, Any]:
    """The package's training config, interpolations (`${sample_rate}`) resolved."""
    from omegaconf import OmegaConf

    if "xp.cfg" not in pkg or "best_state" not in pkg:
        raise CheckpointError(f"'{file}' is not an exported audiocraft checkpoint (no 'xp.cfg' and 'best_state')")
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(pkg["xp.cfg"]), resolve=True)
    except Exception as e:  # omegaconf raises its own errors for malformed YAML or dangling references
        raise CheckpointError(f"the config inside '{file}' is not readable ({type(e).__name__}: {e})") from None
    if not isinstance(resolved, dict):
        raise CheckpointError(f"the config inside '{file}' is not a mapping")
    return {str(k): v for k, v in resolved.items()}


def _need(cfg: dict[str, Any], dotted: str, source: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CheckpointError(f"'{source}': its audiocraft config has no '{dotted}'")
        node = node[part]
    return node


def _check_lm_config(cfg: dict[str, Any], source: str) -> PatternSpec:
    """Refuse, by name, every audiocraft LM setting our decoder does not run; its codebook pattern."""
    if _need(cfg, "lm_model", source) != "transformer_lm":
        raise CheckpointError(f"'{source}' is a '{cfg['lm_model']}' model; only MusicGen's transformer_lm runs here")
    conditioners = _need(cfg, "conditioners", source) or {}
    if "description" not in conditioners or conditioners["description"].get("model") != "t5":
        raise CheckpointError(f"'{source}' has no T5 text conditioner ('description'); only MusicGen's runs here")
    others = set(conditioners) - {"description"}
    style = others == {"self_wav"} and conditioners["self_wav"].get("model") == "style"
    if others and not style:
        raise CheckpointError(
            f"'{source}' is conditioned on more than text ({', '.join(sorted(others))}): of audiocraft-format "
            "checkpoints, text and MusicGen-Style ones load (for MusicGen-Melody use the transformers layout, "
            "facebook/musicgen-melody)"
        )
    fuser = _need(cfg, "fuser", source)
    if style:  # MusicGen-Style: style then text, both in front of the codes
        if set(fuser.get("prepend") or []) != {"self_wav", "description"} or any(
            fuser.get(k) for k in ("sum", "cross", "input_interpolate")
        ):
            raise CheckpointError(f"'{source}': a style model must prepend its style and text (its fuser is {fuser})")
    elif list(fuser.get("cross", [])) != ["description"] or any(fuser.get(k) for k in ("sum", "prepend")):
        raise CheckpointError(f"'{source}': only text by cross-attention is supported (its fuser is {fuser})")
    if fuser.get("cross_attention_pos_emb"):
        raise CheckpointError(f"'{source}': positional embeddings on the cross-attention are not supported")
    lm = _need(cfg, "transformer_lm", source)
    for key, want in _LM_MUST.items():
        if lm.get(key, want) != want:
            raise CheckpointError(
                f"'{source}': transformer_lm.{key} = {lm[key]!r} is not supported (MusicGen's is {want!r})"
            )
    return _pattern(cfg, source)


def _pattern(cfg: dict[str, Any], source: str) -> PatternSpec:
    """The codebook pattern it was trained with (`codebooks_pattern`, else `q_modeling`)."""
    lm = cfg["transformer_lm"]
    try:
        return PatternSpec.from_config(cfg.get("codebooks_pattern"), int(lm["n_q"]), lm.get("q_modeling"))
    except PatternError as e:
        raise CheckpointError(f"'{source}': {e}") from None


def _channels(cfg: dict[str, Any]) -> int:
    stereo = (cfg.get("interleave_stereo_codebooks") or {}).get("use", False)
    return 2 if stereo or int(cfg.get("channels", 1)) == 2 else 1


def _decoder_config(cfg: dict[str, Any]) -> Any:
    from transformers import MusicgenDecoderConfig

    lm = cfg["transformer_lm"]
    card = int(lm["card"])
    dec = MusicgenDecoderConfig(
        vocab_size=card,
        hidden_size=int(lm["dim"]),
        num_hidden_layers=int(lm["num_layers"]),
        num_attention_heads=int(lm["num_heads"]),
        ffn_dim=int(lm["dim"] * lm.get("hidden_scale", 4)),
        num_codebooks=int(lm["n_q"]),
        audio_channels=_channels(cfg),
        max_position_embeddings=2048,  # audiocraft computes positions; transformers' MusicGen table is 2048
    )
    for name in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
        setattr(dec, name, card)
    return dec


# -- the LM --------------------------------------------------------------------------------------


def lm_tensors(state: dict[str, torch.Tensor], dim: int, source: str) -> Tensors:
    """audiocraft LMModel state dict -> transformers MusicGen decoder + enc_to_dec_proj tensors."""
    out: Tensors = {}
    for key, value in state.items():
        if not _LM_KEY.match(key):
            raise CheckpointError(f"'{source}' has a weight this engine does not run: '{key}'")
        name = key
        for pattern, repl in _LM_RENAMES:
            name = re.sub(pattern, repl, name)
        if name.endswith("in_proj_weight"):
            stem = name[: -len("in_proj_weight")]
            if value.shape[0] != 3 * dim:
                raise CheckpointError(f"'{source}': '{key}' has shape {tuple(value.shape)}, not (3 x {dim}, ...)")
            for part, chunk in zip("qkv", value.split(dim)):
                out[f"{stem}{part}_proj.weight"] = chunk
        else:
            out[name] = value
    return out


# -- the style conditioner (MusicGen-Style) -------------------------------------------------------


def _style(path: Path, cfg: dict[str, Any], state: Tensors, source: str, say: Progress) -> StyleParts | None:
    """The style conditioner of a MusicGen-Style checkpoint (None for a text one), its MERT from
    `path/mert` or the hub."""
    style_cfg = (cfg["conditioners"].get("self_wav") or {}).get("style")
    if style_cfg is None:
        if state:
            raise CheckpointError(f"'{source}' has style conditioner weights but no style conditioner in its config")
        return None
    settings = StyleSettings.from_audiocraft(style_cfg, source)
    where = _locate(path, MERT_DIR, MERT_HUB_ID, "its style feature extractor (MERT)", say, code=True)
    say(f"loading style features from {where}")
    return StyleParts(settings, state, load_features(str(where), source))


# -- the text encoder ----------------------------------------------------------------------------


def _text_encoder(path: Path, name: str, say: Progress) -> tuple[Any, Tensors, Any]:
    """(T5Config, `text_encoder.*` tensors, tokenizer) from `path/text_encoder`, else the hub."""
    from transformers import AutoTokenizer, T5Config

    where = _locate(path, TEXT_ENCODER_DIR, _T5_HUB_IDS.get(name, name), "its text encoder", say)
    try:
        config = T5Config.from_pretrained(str(where))
        tokenizer = AutoTokenizer.from_pretrained(str(where))
    except Exception as e:
        raise CheckpointError(f"the text encoder in '{where}' could not be loaded ({type(e).__name__}: {e})") from None
    weights = read_weights(where, f"the text encoder in '{where}'", say)
    tensors = {f"text_encoder.{k}": v for k, v in weights.items() if k.startswith(("encoder.", "shared."))}
    return config, tensors, tokenizer


# -- the codec -----------------------------------------------------------------------------------


def _codec(path: Path, source: str, say: Progress) -> tuple[Any, Tensors]:
    """(EncodecConfig, `audio_encoder.*` tensors) from compression_state_dict.bin."""
    pkg = _read_package(path / CODEC_FILE, source)
    if "pretrained" in pkg:
        name = str(pkg["pretrained"]).removeprefix("//pretrained/")
        where = _locate(path, CODEC_DIR, name, "its codec", say)
        from transformers import EncodecConfig

        try:
            config = EncodecConfig.from_pretrained(str(where))
        except Exception as e:
            raise CheckpointError(f"the codec in '{where}' could not be loaded ({type(e).__name__}: {e})") from None
        weights = read_weights(where, f"the codec in '{where}'", say)
        return config, {f"audio_encoder.{k}": v for k, v in weights.items()}
    cfg = _config(pkg, path / CODEC_FILE)
    return _encodec_config(cfg, source), codec_tensors(pkg["best_state"], source)


def codec_tensors(state: dict[str, torch.Tensor], source: str) -> Tensors:
    """audiocraft EncodecModel (SEANet + RVQ) state dict -> transformers EncodecModel tensors."""
    out: Tensors = {}
    for key, value in state.items():
        name = key
        for pattern, repl in _CODEC_RENAMES:
            name = re.sub(pattern, repl, name)
        if not name.startswith("audio_encoder."):
            raise CheckpointError(f"'{source}': its codec has a weight this engine does not run: '{key}'")
        out[name] = value
    return out


def _encodec_config(cfg: dict[str, Any], source: str) -> Any:
    from transformers import EncodecConfig

    if _need(cfg, "compression_model", source) != "encodec":
        raise CheckpointError(f"'{source}': its codec is '{cfg['compression_model']}', not EnCodec")
    enc = _need(cfg, "encodec", source)
    seanet = _need(cfg, "seanet", source)
    rvq = _need(cfg, "rvq", source)
    if enc.get("autoencoder") != "seanet" or enc.get("quantizer") != "rvq":
        raise CheckpointError(f"'{source}': only a SEANet + RVQ EnCodec is supported")
    if enc.get("renormalize") or int(enc.get("channels", 1)) != 1:
        raise CheckpointError(f"'{source}': only a mono, non-normalised EnCodec is supported (MusicGen's)")
    for key, want in _SEANET_MUST.items():
        if seanet.get(key, want) != want:
            raise CheckpointError(
                f"'{source}': seanet.{key} = {seanet[key]!r} is not supported (MusicGen's is {want!r})"
            )
    if (seanet.get("activation_params") or {}).get("alpha", 1.0) != 1.0:
        raise CheckpointError(f"'{source}': only ELU with alpha 1 is supported in the codec")
    decoder = {**seanet, **(seanet.get("decoder") or {})}
    if decoder.get("final_activation"):
        raise CheckpointError(f"'{source}': a final activation in the codec's decoder is not supported")
    ratios = [int(r) for r in seanet["ratios"]]
    hop = 1
    for r in ratios:
        hop *= r
    bins, n_q = int(rvq["bins"]), int(rvq["n_q"])
    frame_rate = int(enc["sample_rate"]) / hop
    return EncodecConfig(
        sampling_rate=int(enc["sample_rate"]),
        audio_channels=1,
        num_filters=int(seanet["n_filters"]),
        num_residual_layers=int(seanet["n_residual_layers"]),
        upsampling_ratios=ratios,
        norm_type="weight_norm",
        kernel_size=int(seanet["kernel_size"]),
        last_kernel_size=int(seanet["last_kernel_size"]),
        residual_kernel_size=int(seanet["residual_kernel_size"]),
        dilation_growth_rate=int(seanet["dilation_base"]),
        use_causal_conv=bool(seanet.get("causal", False)),
        pad_mode=str(seanet.get("pad_mode", "constant")),
        compress=int(seanet["compress"]),
        num_lstm_layers=int(seanet["lstm"]),
        trim_right_ratio=float(decoder.get("trim_right_ratio", 1.0)),
        codebook_size=bins,
        codebook_dim=int(seanet["dimension"]),
        hidden_size=int(seanet["dimension"]),
        use_conv_shortcut=not bool(seanet.get("true_skip", True)),
        normalize=False,
        chunk_length_s=None,
        # transformers derives the number of quantizers from the largest bandwidth (kbps)
        target_bandwidths=[n_q * (bins.bit_length() - 1) * frame_rate / 1000],
    )


# -- parts that live elsewhere -------------------------------------------------------------------


def _locate(path: Path, folder: str, repo_id: str, what: str, say: Progress, code: bool = False) -> Path:
    """`path/folder` when the user put the part there, else `repo_id` from the hub (or its cache);
    `code`: the part comes with its own modelling code (*.py), as MERT does."""
    local = path / folder
    if local.is_dir():
        return local
    say(f"fetching {what} '{repo_id}' from the Hugging Face hub (or the local cache)")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"] + (["*.py", "*.bin"] if code else [])
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise CheckpointError(
            f"an audiocraft checkpoint does not include {what}, and '{repo_id}' could not be fetched "
            f"({type(e).__name__}): put a save_pretrained copy of it in '{local}'"
        ) from None
