"""Settings from `config.toml` as typed dataclasses.

The file is optional: every field has the default written here, and the CLI's flags override the
file. Unknown sections or keys are an error (a typo in a setting should not be silently ignored).
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
    """Read `path` (or the repository's config.toml if it exists); defaults fill every gap."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.exists():
        if path is not None:
            raise EngineError(f"config file '{p}' does not exist")
        return Config()
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EngineError(f"config file '{p}' is not valid TOML ({e})") from None
    sections = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]
    unknown = set(raw) - set(sections)
    if unknown:
        raise EngineError(f"config file '{p}': unknown section [{sorted(unknown)[0]}]")
    return Config(**{name: _section(p, name, factory(), raw.get(name, {})) for name, factory in sections.items()})


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
