"""Reading a folder's weight files as transformers' `save_pretrained` writes them: one
`model.safetensors` or `pytorch_model.bin`, or shards listed in an index."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import CheckpointError

Progress = Callable[[str], None]


def read_weights(path: Path, source: str, say: Progress) -> dict[str, torch.Tensor]:
    files = weight_files(path, source)
    total = sum(f.stat().st_size for f in files)
    say(f"loading {source}: {len(files)} weight file(s), {total / 1e6:.1f} MB")
    tensors: dict[str, torch.Tensor] = {}
    done = 0
    for i, f in enumerate(files, 1):
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                tensors.update(load_file(str(f)))
            else:
                tensors.update(torch.load(str(f), map_location="cpu", weights_only=True))
        except Exception as e:  # safetensors / pickle errors for truncated or corrupt files
            raise CheckpointError(f"weights file '{f}' is damaged or truncated ({type(e).__name__}: {e})") from None
        done += f.stat().st_size
        say(f"  [{i}/{len(files)}] {f.name}  {100 * done / max(total, 1):.0f}%")
    return tensors


def weight_files(path: Path, source: str) -> list[Path]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"weights index '{index}' is not readable ({e})") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"checkpoint '{source}' is missing weight shard(s): {', '.join(missing)}")
            return [path / s for s in shards]
        if (path / single).is_file():
            return [path / single]
    raise CheckpointError(f"'{source}' has no weights (model.safetensors or pytorch_model.bin)")
