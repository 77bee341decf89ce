"""MusicGen-Style: parity with audiocraft's own style conditioner and double guidance.

Protects: a random MusicGen-Style model built by audiocraft's builders (its style conditioner and
double-CFG code as audiocraft's GitHub sources have them, `audiocraft_style_reference`) and
exported as audiocraft exports it loads through our loader; our style states equal audiocraft's on
synthetic excerpts (exactly the excerpt's length, and longer audio whose middle is taken); greedy
codes are token-exact with audiocraft's `generate` for text and style, style alone, text alone,
under plain guidance and double guidance with several (cfg, cfg_beta); and the ways to get it
wrong are refused in one sentence.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from musicgen_live.engine.errors import AudioInputError, CheckpointError, ContextError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams

from . import audiocraft_reference as ref
from . import audiocraft_style_reference as sref

FRAMES = 40
PROMPT = "dub techno with a deep chord stab"
RATE = 32000


@pytest.fixture(scope="module")
def style_model(ac, tmp_path_factory) -> tuple[Path, Any]:
    """(exported directory, audiocraft LM), built once."""
    t5, mert = ref.random_t5(), sref.random_mert()
    cfg, codec_cfg = sref.style_config(), ref.codec_config()
    lm = sref.build_style_lm(ac, cfg, seed=3, t5=t5, mert=mert)
    codec = ref.build_codec(ac, codec_cfg, seed=2)
    return sref.export_style(tmp_path_factory.mktemp("style"), lm, cfg, codec, codec_cfg, t5, mert), lm


@pytest.fixture(scope="module")
def ours(style_model) -> MusicGen:
    return MusicGen.load(str(style_model[0]), progress=None)


def excerpt(seconds: float, seed: int = 0) -> torch.Tensor:
    """A synthetic excerpt: a chord of three partials under a little noise, (samples,) at 32 kHz."""
    t = torch.arange(int(seconds * RATE)) / RATE
    g = torch.Generator().manual_seed(seed)
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6))
    assert isinstance(chord, torch.Tensor)
    return 0.2 * chord + 0.05 * torch.randn(t.shape[0], generator=g)


def greedy(
    model: MusicGen, prompt: str | None, wav: torch.Tensor | None, cfg: float, beta: float | None
) -> torch.Tensor:
    cond = model.style_condition(prompt, wav, guided=True, double=beta is not None)
    gen = StreamGenerator(model, SamplingParams(greedy=True, cfg=cfg, cfg_beta=beta))
    codes = [gen.start(cond, total_frames=FRAMES).codes]
    while not gen.done:
        codes.append(gen.step().codes)
    return torch.cat(codes, dim=-1)


def test_the_checkpoint_loads_as_a_style_model(ours):
    assert ours.style is not None and ours.melody is False
    assert ours.spec.lm.prefix_conditioned
    assert ours.spec.lm.style_frames == 15  # 3 s of MERT frames (75 a second), every 15th kept


@pytest.mark.parametrize("seconds", [3.0, 5.3], ids=["excerpt-long", "longer-middle-taken"])
def test_style_states_equal_audiocrafts(ac, style_model, ours, seconds):
    wav = excerpt(seconds)
    want = sref.style_states(ac, style_model[1], wav)
    got = ours.style_states(wav)
    assert got.shape == want.shape == (1, 15, ours.spec.lm.hidden)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_stereo_excerpt_is_styled_as_its_mono_mix(ours):
    left, right = excerpt(3.0, seed=1), excerpt(3.0, seed=2)
    torch.testing.assert_close(ours.style_states(torch.stack([left, right])), ours.style_states((left + right) / 2))


@pytest.mark.parametrize(
    "cfg, beta",
    [(3.0, None), (3.0, 5.0), (1.5, 0.5), (5.5, 2.0)],
    ids=["plain", "double-3-5", "double-1.5-0.5", "double-5.5-2"],
)
def test_greedy_codes_match_audiocraft_for_text_and_style(ac, style_model, ours, cfg, beta):
    wav = excerpt(3.0)
    want = sref.generate_style(ac, style_model[1], PROMPT, wav, FRAMES, cfg, beta)
    assert torch.equal(greedy(ours, PROMPT, wav, cfg, beta), want)


@pytest.mark.parametrize("what", ["style-alone", "text-alone", "neither"])
def test_greedy_codes_match_audiocraft_with_a_part_missing(ac, style_model, ours, what):
    prompt = None if what in ("style-alone", "neither") else PROMPT
    wav = None if what in ("text-alone", "neither") else excerpt(4.0, seed=3)
    want = sref.generate_style(ac, style_model[1], prompt, wav, FRAMES, 3.0, 4.0)
    assert torch.equal(greedy(ours, prompt, wav, 3.0, 4.0), want)


def test_double_guidance_needs_the_style_alone_row(ours):
    plain = ours.style_condition(PROMPT, excerpt(3.0), guided=True, double=False)
    gen = StreamGenerator(ours, SamplingParams(greedy=True))
    gen.start(plain, total_frames=FRAMES)
    with pytest.raises(ContextError, match="cfg_beta"):
        gen.set_params(SamplingParams(greedy=True, cfg_beta=2.0))


def test_an_excerpt_shorter_than_the_model_needs_is_refused_in_one_sentence(ours):
    with pytest.raises(AudioInputError, match=r"style needs at least 3 s of audio; got 1\.00 s"):
        ours.style_states(excerpt(1.0))


def test_a_text_model_refuses_style_in_one_sentence():
    model = MusicGen.load("tiny", progress=None)
    with pytest.raises(ContextError, match="has no style conditioning"):
        model.style_condition(PROMPT, excerpt(3.0), guided=True)
    gen = StreamGenerator(model, SamplingParams())
    gen.start(model.conditioner.condition(PROMPT), total_frames=FRAMES)
    with pytest.raises(ContextError, match="cfg_beta"):
        gen.set_params(SamplingParams(cfg_beta=3.0))


def test_style_checkpoints_the_engine_cannot_run_are_refused_by_name(style_model, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    broken = tmp_path / "encodec-features"
    shutil.copytree(style_model[0], broken)
    pkg = torch.load(broken / "state_dict.bin", weights_only=True)
    cfg = OmegaConf.create(pkg["xp.cfg"])
    cfg.conditioners.self_wav.style.model_name = "encodec"
    pkg["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(pkg, broken / "state_dict.bin")
    with pytest.raises(CheckpointError, match="takes 'encodec' features; only MERT ones run here"):
        MusicGen.load(str(broken), progress=None)


def test_a_style_checkpoint_without_mert_says_where_to_put_it(style_model, tmp_path, monkeypatch):
    import shutil

    bare = tmp_path / "no-mert"
    shutil.copytree(style_model[0], bare, ignore=shutil.ignore_patterns("mert"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"MERT.*could not be fetched.*put a save_pretrained copy of it in"):
        MusicGen.load(str(bare), progress=None)


def test_other_inference_settings_match_audiocrafts_set_params(ac, style_model, ours):
    """audiocraft's `set_style_conditioner_params(eval_q, excerpt_length)`: fewer or more codebooks
    of the quantizer, a shorter or longer excerpt - the same states and greedy codes here."""
    conditioner = style_model[1].condition_provider.conditioners["self_wav"]
    wav = excerpt(5.0, seed=4)
    try:
        for eval_q, seconds in ((1, 2.0), (6, 4.5)):
            conditioner.set_params(eval_q=eval_q, excerpt_length=seconds)
            want = sref.style_states(ac, style_model[1], wav)
            got = ours.style_states(wav, eval_q=eval_q, excerpt_s=seconds)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        codes = sref.generate_style(ac, style_model[1], PROMPT, wav, FRAMES, 3.0, 5.0)
        cond = ours.style_condition(PROMPT, wav, guided=True, double=True, eval_q=6, excerpt_s=4.5)
        gen = StreamGenerator(ours, SamplingParams(greedy=True, cfg=3.0, cfg_beta=5.0))
        got_codes = [gen.start(cond, total_frames=FRAMES).codes]
        while not gen.done:
            got_codes.append(gen.step().codes)
        assert torch.equal(torch.cat(got_codes, dim=-1), codes)
    finally:
        conditioner.set_params(eval_q=3, excerpt_length=3.0)
    assert ours.style.settings.eval_q == 3 and ours.style.settings.excerpt_s == 3.0  # the model is unchanged


@pytest.mark.parametrize(
    "eval_q, seconds, message",
    [(7, None, r"style eval_q must be 1\.\.6"), (0, None, "eval_q"), (None, 0.5, r"a style excerpt is 1\.\.30 s")],
)
def test_settings_out_of_range_are_refused_in_one_sentence(ours, eval_q, seconds, message):
    with pytest.raises(ContextError, match=message):
        ours.style_states(excerpt(3.0), eval_q=eval_q, excerpt_s=seconds)
