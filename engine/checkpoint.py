"""Finding and reading MusicGen checkpoints in the Hugging Face layout.

Sources, in the order they are tried:
- a built-in name: `tiny` (the demo/test model) or `small` / `medium` / `large` (random weights of
  the published shapes, for benchmarks) - built in memory from a fixed seed, no files, no network;
- a local directory as `save_pretrained` writes it (config.json, model.safetensors or
  pytorch_model.bin, possibly sharded with an index, tokenizer files);
- a local directory in audiocraft's format (state_dict.bin + compression_state_dict.bin:
  `audiocraft_format`), translated into the transformers layout on load;
- a hub id such as `facebook/musicgen-small`, downloaded when the machine is online (either layout).

Weight norm comes either as `weight_g/weight_v` or as `parametrizations.weight.original0/1`; both
are baked into a plain `weight` once, here, so no later code sees the difference.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .audiocraft_format import CODEC_FILE, LM_FILE, is_audiocraft_directory, load_audiocraft_directory
from .errors import CheckpointError
from .presets import (
    BUILT_IN_MODELS,
    Arch,
    arch_for,
    quiet_transformers,
    random_hf_model,
    random_style,
    random_tokenizer,
)
from .spec import ModelSpec, spec_from_hf_config
from .style import StyleParts
from .weightfiles import read_weights

Progress = Callable[[str], None]

BUILTIN_SEED = 1234


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Checkpoint:
    """Everything read from a source, before any compute objects are built."""

    source: str
    spec: ModelSpec
    hf_config: Any
    tensors: dict[str, torch.Tensor]  # full state dict, weight norm already baked
    tokenizer: Any
    two_step_cfg: bool = False  # trained to run guidance as two forwards (an audiocraft setting)
    style: StyleParts | None = None  # MusicGen-Style: its style conditioner (audiocraft format)


def style_frames(style: StyleParts | None) -> int:
    """Style frames in a MusicGen-Style prefix (0 without style)."""
    return 0 if style is None else style.prefix_frames()


def load_checkpoint(source: str, progress: Progress | None = stderr_progress) -> Checkpoint:
    say = progress or (lambda _m: None)
    if source in BUILT_IN_MODELS:
        say(f"building built-in model '{source}' (random weights, seed {BUILTIN_SEED})")
        arch = arch_for(source)
        ckpt = from_hf_model(random_hf_model(arch, seed=BUILTIN_SEED), random_tokenizer(), source=source)
        return with_random_style(ckpt, arch) if arch.style else ckpt
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"'{source}' is a file, not a checkpoint directory")
        return _load_directory(path, source, say)
    if _looks_like_hub_id(source):
        return _load_directory(_download(source, say), source, say)
    raise CheckpointError(
        f"unknown model '{source}': not a built-in name ({', '.join(BUILT_IN_MODELS)}), "
        "not an existing directory, and not a hub id like 'facebook/musicgen-small'"
    )


def with_random_style(ckpt: Checkpoint, arch: Arch, seed: int = BUILTIN_SEED) -> Checkpoint:
    """A built-in style model: the prefix decoder `ckpt` (built as a melody one, no cross-attention)
    with a random style conditioner in place of the chroma."""
    style = random_style(arch, seed)
    lm = replace(ckpt.spec.lm, num_chroma=0, chroma_length=0, has_audio_proj=False, style_frames=style_frames(style))
    return replace(ckpt, spec=replace(ckpt.spec, lm=lm), style=style)


def from_hf_model(model: Any, tokenizer: Any, source: str) -> Checkpoint:
    """Wrap an in-memory transformers model (tests, benchmarks, built-ins) without copying weights."""
    tensors = bake_weight_norm(dict(model.state_dict()))
    return Checkpoint(source, spec_from_hf_config(model.config), model.config, tensors, tokenizer)


# -- directories -------------------------------------------------------------------------------


def _load_directory(path: Path, source: str, say: Progress) -> Checkpoint:
    if is_audiocraft_directory(path):
        ac = load_audiocraft_directory(path, source, say)
        spec = spec_from_hf_config(ac.config)
        # audiocraft always projects the text (transformers drops the projection when widths match)
        # the pattern is kept only where it is not MusicGen's own (None says "MusicGen's delay pattern")
        pattern = None if ac.pattern.plain_delays == spec.lm.musicgen_delays else ac.pattern
        lm = replace(spec.lm, has_enc_to_dec_proj=True, style_frames=style_frames(ac.style), pattern=pattern)
        spec = replace(spec, lm=lm)
        tensors = bake_weight_norm(ac.tensors)
        _check_tensors(tensors, spec, source)
        return Checkpoint(source, spec, ac.config, tensors, ac.tokenizer, two_step_cfg=ac.two_step_cfg, style=ac.style)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"'{source}' is not a MusicGen checkpoint: it has neither config.json (transformers) "
            f"nor {LM_FILE} (audiocraft)"
        )
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"'{config_file}' is not readable JSON ({e})") from None
    if raw.get("model_type") not in ("musicgen", "musicgen_melody"):
        raise CheckpointError(
            f"'{source}' is not a MusicGen checkpoint (its config.json says model_type '{raw.get('model_type')}')"
        )
    from transformers import MusicgenConfig, MusicgenMelodyConfig

    quiet_transformers()
    config_class = MusicgenMelodyConfig if raw.get("model_type") == "musicgen_melody" else MusicgenConfig
    try:
        hf_config = config_class.from_dict(raw)
    except Exception as e:  # transformers raises many types for a malformed config
        raise CheckpointError(f"'{config_file}' is not a valid MusicGen config ({e})") from None
    spec = spec_from_hf_config(hf_config)
    tensors = bake_weight_norm(read_weights(path, source, say))
    _check_tensors(tensors, spec, source)
    return Checkpoint(source, spec, hf_config, tensors, _load_tokenizer(path, source))


def _load_tokenizer(path: Path, source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise CheckpointError(f"the tokenizer in '{source}' could not be loaded ({type(e).__name__}: {e})") from None


def _check_tensors(tensors: dict[str, torch.Tensor], spec: ModelSpec, source: str) -> None:
    needed = [
        "decoder.model.decoder.embed_tokens.0.weight",
        f"decoder.model.decoder.layers.{spec.lm.layers - 1}.fc2.weight",
        "decoder.lm_heads.0.weight",
        "audio_encoder.quantizer.layers.0.codebook.embed",
    ]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint '{source}' lacks expected weights (e.g. {missing[0]})")
    emb = tensors["decoder.model.decoder.embed_tokens.0.weight"]
    if tuple(emb.shape) != (spec.lm.card + 1, spec.lm.hidden):
        raise CheckpointError(
            f"checkpoint '{source}': embedding shape {tuple(emb.shape)} does not match its config "
            f"({spec.lm.card + 1}, {spec.lm.hidden})"
        )


# -- the hub -----------------------------------------------------------------------------------

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "pytorch_model*.bin"]


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _download(repo_id: str, say: Progress) -> Path:
    say(f"downloading {repo_id} from the Hugging Face hub (or using the local cache)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS)
        if not (Path(local) / "config.json").is_file():  # an audiocraft-format repo
            local = snapshot_download(repo_id, allow_patterns=["*.json", LM_FILE, CODEC_FILE])
    except Exception as e:
        name = type(e).__name__
        hint = (
            " - is this machine offline? pass a local checkpoint directory instead"
            if "Connect" in name or "Offline" in name or "Timeout" in name
            else ""
        )
        raise CheckpointError(f"could not fetch '{repo_id}' from the hub ({name}){hint}") from None
    return Path(local)


# -- weight norm -------------------------------------------------------------------------------


def bake_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair by the plain weight g * v / ||v|| (norm over all dims but 0).

    Uses the same kernel as torch's parametrization, so baked weights are bit-identical to what the
    reference computes at every forward.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for g_suffix, v_suffix in (
            (".weight_g", ".weight_v"),
            (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
        ):
            if key.endswith(g_suffix):
                stem = key[: -len(g_suffix)]
                out[stem + ".weight"] = torch._weight_norm(sd[stem + v_suffix], value, 0)
                break
            if key.endswith(v_suffix):
                break
        else:
            out[key] = value
    return out
