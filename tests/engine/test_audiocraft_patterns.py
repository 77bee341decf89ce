"""Every codebook pattern, token-exact with audiocraft's own `LMModel.generate`.

Protects: a random MusicGen built by audiocraft's builders with each pattern provider - parallel,
delay (default, custom delays, flatten_first 2, empty_initial 1 and -1), unroll (full and partial
flattening, with delays), coarse_first, musiclm - and exported as audiocraft exports it loads
with its pattern and gives audiocraft's greedy codes at cfg 1 and 3, with and without prompt codes;
`render` decodes its codes streamed as the one-shot decode does (within 1e-5); a pattern that needs a
prompt says so; the live engine says in one sentence that it plays delay patterns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.model import MusicGen, model_summary
from musicgen_live.engine.pattern_run import generate_with_pattern
from musicgen_live.engine.render import render
from musicgen_live.engine.sampling import SamplingParams

from . import audiocraft_reference as ref

FRAMES = 24
PROMPT = "a slow pad"
PATTERNS: list[tuple[str, str, dict[str, Any]]] = [  # (id, modeling, settings)
    ("parallel", "parallel", {}),
    ("delay", "delay", {"delays": [0, 1, 2, 3]}),
    ("delay-custom", "delay", {"delays": [0, 2, 2, 5]}),
    ("delay-flatten-first", "delay", {"delays": [0, 1, 2, 3], "flatten_first": 2}),
    ("delay-empty-initial", "delay", {"delays": [0, 1, 2, 3], "empty_initial": 1}),
    ("delay-no-bos", "delay", {"delays": [0, 1, 2, 3], "empty_initial": -1}),
    ("unroll", "unroll", {}),
    ("unroll-partial", "unroll", {"flattening": [0, 1, 1, 1]}),
    ("unroll-partial-delays", "unroll", {"flattening": [0, 1, 1, 1], "delays": [0, 1, 1, 1]}),
    ("coarse-first", "coarse_first", {"delays": [0, 1, 2]}),
    ("musiclm", "musiclm", {"group_by": 2}),
]


@pytest.fixture(scope="module")
def checkpoints(ac, tmp_path_factory):
    """pattern id -> (our model, audiocraft's LM, its directory), each built once."""
    t5, codec_cfg = ref.random_t5(), ref.codec_config()
    codec = ref.build_codec(ac, codec_cfg, seed=2)
    made: dict[str, tuple[MusicGen, Any, Path]] = {}

    def get(name: str) -> tuple[MusicGen, Any, Path]:
        if name not in made:
            _, modeling, settings = next(p for p in PATTERNS if p[0] == name)
            cfg = ref.lm_config(dim=32, layers=2, heads=2)
            cfg["codebooks_pattern"] = {"modeling": modeling, modeling: settings}
            lm = ref.build_lm(ac, cfg, seed=5, t5=t5)
            path = ref.export(tmp_path_factory.mktemp(name), lm, cfg, codec, codec_cfg, t5)
            made[name] = (MusicGen.load(str(path), exact=True, progress=None), lm, path)
        return made[name]

    return get


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("name", [p[0] for p in PATTERNS])
def test_greedy_codes_match_audiocraft(ac, checkpoints, name, cfg):
    ours, lm, _ = checkpoints(name)
    params = SamplingParams(greedy=True, cfg=cfg)
    prompt_codes = torch.randint(0, 2048, (4, 5), generator=torch.Generator().manual_seed(7))
    want = ref.generate(ac, lm, PROMPT, FRAMES, cfg, prompt_codes=prompt_codes)
    cond = ours.conditioner.condition(PROMPT, guided=cfg != 1.0)
    got, _ = generate_with_pattern(ours, ours.codebook_pattern, cond, FRAMES + 5, params, prompt_codes)
    assert torch.equal(got, want), "with prompt codes"
    if name == "delay-no-bos":  # no step before frame 0: audiocraft cannot start without a prompt either
        with pytest.raises(ContextError, match="needs a prompt"):
            render(ours, PROMPT, FRAMES, params)
        return
    want = ref.generate(ac, lm, PROMPT, FRAMES, cfg)
    got_render = render(ours, PROMPT, FRAMES, params)
    assert torch.equal(got_render.codes, want), "without a prompt"
    with torch.no_grad():
        whole = ours.codec.decode(ours.codes_to_codec(want)).squeeze(1)  # the one-shot decode
    assert got_render.audio.shape == whole.shape
    assert (got_render.audio - whole).abs().max() <= 1e-5 * max(1.0, float(whole.abs().max()))


def test_the_model_says_its_pattern_and_the_live_engine_refuses_one_it_cannot_step(checkpoints):
    ours, _, _ = checkpoints("unroll-partial")
    assert model_summary(ours)["pattern"] == "unroll flattening [0, 1, 1, 1]" and not ours.streams
    assert ours.max_frames == (ours.max_columns - 1) // 2  # two steps a frame
    with pytest.raises(ContextError, match="'unroll flattening \\[0, 1, 1, 1\\]' codebook pattern renders"):
        StreamGenerator(ours).start(ours.conditioner.condition(PROMPT, guided=True), guided=True)
    plain, _, _ = checkpoints("delay-custom")
    assert plain.streams and plain.pattern.delays == (0, 2, 2, 5)  # a plain delay pattern streams
    assert model_summary(plain)["pattern"] == "delay delays [0, 2, 2, 5]"


def test_a_custom_delay_pattern_streams_as_it_renders(checkpoints):
    ours, _, _ = checkpoints("delay-custom")
    params = SamplingParams(greedy=True, cfg=3.0)
    cond = ours.conditioner.condition(PROMPT, guided=True)
    want, _ = generate_with_pattern(ours, ours.codebook_pattern, cond, FRAMES, params)
    assert torch.equal(render(ours, PROMPT, FRAMES, params).codes, want)  # the stream engine's path


def test_render_names_the_pattern_and_serve_refuses_one_it_cannot_stream(checkpoints, tmp_path, capsys):
    from musicgen_live.bridges.cli import main

    _, _, path = checkpoints("unroll-partial")
    out = tmp_path / "a.wav"
    assert main(["render", "--model", str(path), "--prompt", PROMPT, "--frames", "10", "--out", str(out)]) == 0
    assert "codebook pattern: unroll flattening [0, 1, 1, 1]" in capsys.readouterr().err and out.is_file()
    code = main(
        ["serve", "--model", str(path), "--output", "null", "--seconds", "1", "--osc-port", "0", "--ws-port", "0"]
    )
    err = capsys.readouterr().err
    assert code != 0 and "does not stream yet: serve plays delay patterns" in err, err
