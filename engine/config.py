"""Settings from `config.toml` as typed dataclasses.

Each layer owns the dataclasses of its sections (engine: [model], [sampling]; streamer: [stream];
bridges: theirs) and the outermost layer composes them with `load_sections`. The file is optional:
every field has a default, and the CLI's flags override the file. Unknown sections or keys are an
error (a typo in a setting should not be silently ignored).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import EngineError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config.toml"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"  # tiny | small | medium | large | a checkpoint directory | a hub id
    device: str = "cpu"
    exact: bool = False  # parity kernels (token-exact with transformers), slower
    precision: str = "float32"  # live-path weights: float32 | bfloat16 | float16 | int8 (CPU)


@dataclass(frozen=True)
class SamplingConfig:
    cfg: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def load_config(path: str | Path | None = None) -> Config:
    """The engine's own sections only (other sections in the file are left to their layers)."""
    sections = load_sections(path, {"model": ModelConfig, "sampling": SamplingConfig}, strict=False)
    return Config(**sections)


def load_sections(path: str | Path | None, schema: dict[str, type], strict: bool = True) -> dict[str, Any]:
    """Read `path` (or the repository's config.toml if it exists) into one dataclass per section.

    `strict`: a section the schema does not know is an error (the outermost layer knows them all).
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    raw: dict[str, Any] = {}
    if p.exists():
        try:
            raw = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise EngineError(f"config file '{p}' is not valid TOML ({e})") from None
    elif path is not None:
        raise EngineError(f"config file '{p}' does not exist")
    unknown = set(raw) - set(schema)
    if strict and unknown:
        raise EngineError(f"config file '{p}': unknown section [{sorted(unknown)[0]}]")
    for name in schema:
        if name in raw and not isinstance(raw[name], dict):
            raise EngineError(f"config file '{p}': [{name}] must be a section")
    return {name: _section(p, name, cls(), raw.get(name, {})) for name, cls in schema.items()}


def _section(path: Path, name: str, default: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(default)}
    for key, value in values.items():
        if key not in known:
            raise EngineError(f"config file '{path}': unknown setting '{key}' in [{name}]")
        expected = type(getattr(default, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            values = {**values, key: value}
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise EngineError(
                f"config file '{path}': [{name}] {key} must be {expected.__name__}, got {type(value).__name__}"
            )
    return type(default)(**{**{f: getattr(default, f) for f in known}, **values})
