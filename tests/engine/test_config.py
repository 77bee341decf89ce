"""config.toml. Protects: the shipped file parses to the built-in defaults, defaults fill gaps, and
every mistake - a typo, a wrong type, a value out of range, a port that cannot be, a folder that does
not exist, an unknown section - is one sentence naming the file, the section and key, and the value."""

import pytest
from musicgen_live.engine.config import DEFAULT_PATH, Config, load_config
from musicgen_live.engine.errors import UserError


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
        (
            "[sampling]\ncgf = 2.0\n",
            "[sampling]: unknown setting 'cgf' (known: cfg, cfg_beta, seed, temperature, top_k, top_p)",
        ),
        ("[sampling]\ntop_k = 'many'\n", "[sampling] top_k: expected a whole number, got 'many'"),
        ("[sampling]\ncfg = 99\n", "[sampling] cfg: expected a number <= 20, got 99"),
        ("[model]\nexact = 1\n", "[model] exact: expected true or false, got 1"),
        (
            "[model]\nprecision = 'int3'\n",
            "[model] precision: expected one of float32, bfloat16, float16, int8, int4, got 'int3'",
        ),
        ("[stream]\nbuffer_ms = -1\n", "[stream] buffer_ms: expected a number > 0, got -1"),
        ("[stream]\nsessions = 2\nextra_outputs = ['null', 'null']\n", "[stream] extra_outputs: 2 given for 1"),
        ("[osc]\nport = 70000\n", "[osc] port: expected a whole number <= 65535, got 70000"),
        ("[osc]\nallow = ['nowhere']\n", "[osc] allow: 'nowhere' is not an address or a network"),
        ("[websocket]\norigins = 'http://x'\n", "[websocket] origins: expected a list, got 'http://x'"),
        ("[bridges]\naudio_dirs = ['/no/such/folder']\n", "[bridges] audio_dirs: '/no/such/folder' is not a folder"),
        ("[model\n", "not valid TOML"),
        ("[sound]\nx = 1\n", "unknown section [sound]"),
    ],
)
def test_bad_config_is_one_sentence_with_file_key_and_value(tmp_path, text, message):
    from musicgen_live.bridges.cli.settings import schema as _schema
    from musicgen_live.engine.config import load_sections

    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_sections(p, _schema())
    assert str(e.value).startswith(f"config file '{p}'") and message in str(e.value)


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_sections_are_errors_where_every_section_is_known(tmp_path):
    from musicgen_live.engine.config import ModelConfig, load_sections

    p = tmp_path / "c.toml"
    p.write_text("[sound]\nx = 1\n")
    with pytest.raises(UserError, match="unknown section"):
        load_sections(p, {"model": ModelConfig})
