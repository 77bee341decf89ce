"""Checkpoint loading. Protects: both weight-norm layouts, sharded files, clear errors for bad sources."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from musicgen_live.engine.checkpoint import load_checkpoint
from musicgen_live.engine.errors import CheckpointError
from musicgen_live.engine.model import MusicGen
from safetensors.torch import load_file, save_file


def test_legacy_weight_g_weight_v_layout_loads_identically(checkpoint_dir, tmp_path):
    src = checkpoint_dir("h64-l2-h4")
    dst = tmp_path / "legacy"
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    legacy = {}
    for k, v in sd.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        )
        legacy[k] = v
    assert any(k.endswith(".weight_g") for k in legacy)
    save_file(legacy, str(dst / "model.safetensors"))
    a = load_checkpoint(str(src), None).tensors
    b = load_checkpoint(str(dst), None).tensors
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_checkpoint_loads(checkpoint_dir, tmp_path):
    src = checkpoint_dir("h64-l2-h4")
    dst = tmp_path / "sharded"
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(dst / name))
        weight_map.update({k: name for k in ks})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    messages = []
    ck = load_checkpoint(str(dst), messages.append)
    assert len(ck.tensors) == len(load_checkpoint(str(src), None).tensors)
    assert any("[2/2]" in m for m in messages)  # progress per shard


def test_builtin_tiny_needs_no_files_and_is_deterministic():
    a = MusicGen.load("tiny", progress=None)
    b = MusicGen.load("tiny", progress=None)
    assert torch.equal(a.lm.w.heads_cat, b.lm.w.heads_cat)
    assert a.spec.codec.sample_rate == 32000 and a.spec.lm.num_codebooks == 4


def test_unknown_model_name(tmp_path):
    with pytest.raises(CheckpointError, match="unknown model"):
        load_checkpoint("no-such-model", None)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="neither config.json"):
        load_checkpoint(str(tmp_path), None)


def test_directory_of_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a MusicGen checkpoint"):
        load_checkpoint(str(tmp_path), None)


def test_truncated_weights_file(checkpoint_dir, tmp_path):
    dst = tmp_path / "truncated"
    shutil.copytree(checkpoint_dir("h64-l2-h4"), dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(str(dst), None)


def test_missing_weights(checkpoint_dir, tmp_path):
    dst = tmp_path / "noweights"
    shutil.copytree(checkpoint_dir("h64-l2-h4"), dst)
    (dst / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        load_checkpoint(str(dst), None)


def test_a_file_instead_of_a_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(str(f), None)
