"""Settings from `config.toml` as typed dataclasses, checked at load.

Each layer owns the dataclasses of its sections (engine: [model], [sampling]; streamer: [stream];
bridges: theirs) and the outermost layer composes them with `load_sections`. The file is optional:
every field has a default (the built-in defaults are the dataclasses' own, so an installed wheel
needs no file), and the CLI's flags override the file. Fields carry their ranges as `Annotated`
constraints; msgspec checks types and ranges (it loads in ~0.1 s, which matters for `send`, and
turns the TOML values into the dataclasses in one call), and every problem - an unknown section or
key, a wrong type, a value out of range, a folder that does not exist - is one sentence naming the
file and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

import msgspec
from msgspec import Meta

from .errors import UserError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config.toml"


Text = Annotated[str, Meta(min_length=1)]
Seconds = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


@dataclass(frozen=True)
class ModelConfig:
    name: Text = "tiny"  # tiny | small | medium | large (+ -stereo | -melody) | a checkpoint directory | a hub id
    device: Text = "cpu"
    exact: bool = False  # parity kernels (token-exact with transformers), slower
    precision: Literal["float32", "bfloat16", "float16", "int8", "int4"] = "float32"  # live-path weights (int8/4: CPU)
    guidance: Literal["auto", "batched", "two-step"] = "auto"  # CFG rows in one forward or two (auto: as trained)
    kv: Literal["float32", "float16", "int8"] = "float32"  # self-attention cache (float16 / int8: CPU kernels)
    codec: Literal["float32", "int8"] = "float32"  # streaming decoder's large matrices (int8: CPU)
    pattern: str = ""  # built-in models: another codebook pattern (NAME[:KEY=VALUES]...); "" = the model's own


@dataclass(frozen=True)
class SamplingConfig:
    cfg: Annotated[float, Meta(ge=0, le=20)] = 3.0
    cfg_beta: Annotated[float, Meta(ge=0, le=20)] = 0.0  # MusicGen-Style's double guidance; 0 = off
    temperature: Annotated[float, Meta(ge=0.05, le=5)] = 1.0
    top_k: Annotated[int, Meta(ge=0, le=2048)] = 250
    top_p: Annotated[float, Meta(ge=0, le=1)] = 0.0
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 0


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
            raise UserError(f"config file '{p}' is not valid TOML ({e})") from None
    elif path is not None:
        raise UserError(f"config file '{p}' does not exist")
    unknown = set(raw) - set(schema)
    if strict and unknown:
        raise UserError(f"config file '{p}': unknown section [{sorted(unknown)[0]}]")
    for name in schema:
        if name in raw and not isinstance(raw[name], dict):
            raise UserError(f"config file '{p}': [{name}] must be a section")
    return {name: _section(p, name, cls(), raw.get(name, {})) for name, cls in schema.items()}


def override(section: Any, name: str, changes: dict[str, Any], source: str = "the command line") -> Any:
    """`section` with `changes` (from `source`), checked like the file's values."""
    if not changes:
        return section
    values = {f.name: getattr(section, f.name) for f in fields(section)} | changes
    return _section(source, name, type(section)(), values, what=f"{source}: [{name}]")


def _section(path: Path | str, name: str, default: Any, values: dict[str, Any], what: str = "") -> Any:
    what = what or f"config file '{path}': [{name}]"
    cls = type(default)
    known = {f.name for f in fields(default)}
    for key in values:
        if key not in known:
            raise UserError(f"{what}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
    try:
        section = msgspec.convert(values, cls)
    except msgspec.ValidationError as e:
        key = str(e).rsplit("$.", 1)[-1].split("[", 1)[0].rstrip("`")
        got = f", got {values[key]!r}" if key in values else ""
        choices = get_args(get_type_hints(cls).get(key))
        sentence = (
            f"expected one of {', '.join(map(str, choices))}" if "enum" in str(e) and choices else _sentence(str(e))
        )
        raise UserError(f"{what} {key}: {sentence}{got}") from None
    check = getattr(section, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise UserError(f"{what} {e}") from None
    return section


def _sentence(error: str) -> str:
    """msgspec's "Expected `int` <= 65535 - at `$.port`" as "expected a whole number <= 65535"."""
    text = error.split(" - at ", 1)[0].split(", got `", 1)[0]  # the value itself is added by the caller
    text = re.sub(r"(?<=[<>=] )(-?\d+)\.0\b", r"\1", text)  # "<= 20.0" -> "<= 20"
    for kind, words in (
        ("`int`", "a whole number"),
        ("`float`", "a number"),
        ("`str`", "text"),
        ("`array`", "a list"),
        ("`bool`", "true or false"),
        ("`object`", "a section"),
    ):
        text = text.replace(kind, words)
    return text[:1].lower() + text[1:]
