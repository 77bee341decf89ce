"""config.toml. Protects: the shipped file parses, defaults fill gaps, typos and wrong types are errors."""

import pytest

from engine.config import DEFAULT_PATH, Config, load_config
from engine.errors import EngineError


def test_shipped_config_parses_to_the_defaults():
    assert DEFAULT_PATH.exists()
    assert load_config() == Config()


def test_partial_file_keeps_defaults(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[sampling]\ncfg = 5\n")
    c = load_config(p)
    assert c.sampling.cfg == 5.0 and c.sampling.top_k == 250 and c.model.name == "tiny"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[sampling]\ncgf = 2.0\n", "unknown setting 'cgf'"),
        ("[sampling]\ntop_k = 'many'\n", "must be int"),
        ("[model]\nexact = 1\n", "must be bool"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(EngineError, match=message):
        load_config(p)


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_sections_are_errors_where_every_section_is_known(tmp_path):
    from engine.config import ModelConfig, load_sections

    p = tmp_path / "c.toml"
    p.write_text("[sound]\nx = 1\n")
    with pytest.raises(EngineError, match="unknown section"):
        load_sections(p, {"model": ModelConfig})
