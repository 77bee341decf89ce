"""MusicGen-Melody parity with transformers: the release blocker for melody checkpoints.

Protects: greedy codes token-exact with `MusicgenMelodyForConditionalGeneration.generate(do_sample=
False, guidance_scale=C, max_new_tokens=N+3)` over 160 frames for several random architectures,
C = 1 and 3, conditioned on text only, chroma only, and both; our chroma features equal to
`MusicgenMelodyFeatureExtractor`'s on a synthetic tone sequence and on noise; the clear sentences
for what a melody cannot do.
"""

from __future__ import annotations

import math

import pytest
import torch
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.melody import ChromaExtractor
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.presets import ENCODEC_32K, T5_TINY, Arch, save_random_checkpoint
from musicgen_live.engine.render import render
from musicgen_live.engine.sampling import SamplingParams

from .reference import generate_codes

FRAMES = 160
SLIM_CODEC = dict(ENCODEC_32K, num_filters=8, hidden_size=32, codebook_dim=32)
BIG_VOCAB = dict(T5_TINY, vocab_size=4096)  # transformers feeds T5 token 2048 when there is no text
ARCHS = {
    "melody-h64-l2-h4": Arch(hidden=64, layers=2, heads=4, codec=SLIM_CODEC, text=BIG_VOCAB, melody=True),
    "melody-h48-l3-h4-short": Arch(
        hidden=48, layers=3, heads=4, ffn=160, codec=SLIM_CODEC, text=BIG_VOCAB, melody=True, chroma_length=40
    ),
}


def tones(seconds: float, rate: int = 32000) -> torch.Tensor:
    """A sequence of sine tones, one pitch class a quarter second: a melody with a clear chroma."""
    t = torch.arange(int(seconds * rate)) / rate
    notes = 220.0 * 2 ** (torch.floor(t * 4) % 12 / 12)
    return 0.5 * torch.sin(2 * math.pi * torch.cumsum(notes / rate, 0))


@pytest.fixture(scope="module")
def melody_models(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

    cache = {}

    def get(name: str):
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            save_random_checkpoint(str(path), ARCHS[name], seed=11)
            hf = MusicgenMelodyForConditionalGeneration.from_pretrained(str(path)).eval()
            ours = MusicGen.load(str(path), exact=True, progress=None)
            cache[name] = (hf, AutoTokenizer.from_pretrained(str(path)), ours)
        return cache[name]

    return get


def reference_codes(hf, tokenizer, prompt: str | None, chroma: torch.Tensor | None, cfg: float) -> torch.Tensor:
    inputs = {} if prompt is None else dict(tokenizer([prompt], return_tensors="pt"))
    if chroma is not None:
        inputs["input_features"] = chroma[None]
    return generate_codes(hf, cfg, FRAMES, **inputs)[0]


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("inputs", ["text", "chroma", "both"])
def test_greedy_melody_codes_match_transformers(melody_models, name, cfg, inputs):
    hf, tokenizer, ours = melody_models(name)
    prompt = "a folk tune over a drone" if inputs != "chroma" else None
    chroma = ours.chroma(tones(3.0)) if inputs != "text" else None
    expected = reference_codes(hf, tokenizer, prompt, chroma, cfg)
    guided = cfg != 1.0
    cond = ours.melody_condition(prompt, None, guided, chroma=chroma)
    got = render(ours, "", FRAMES, SamplingParams(cfg=cfg, top_k=1), condition=cond).codes
    assert got.shape == expected.shape
    assert torch.equal(got, expected), f"first difference at frame {int((got != expected).any(0).nonzero()[0])}"


@pytest.mark.parametrize("signal", ["tones", "noise", "short"])
def test_chroma_equals_the_feature_extractor(signal):
    torchaudio = pytest.importorskip("torchaudio", reason="the reference extractor needs torchaudio (make setup)")
    del torchaudio
    from transformers import MusicgenMelodyFeatureExtractor

    audio = {
        "tones": tones(6.0),
        "noise": torch.randn(32000 * 4, generator=torch.Generator().manual_seed(3)) * 0.3,
        "short": tones(0.3),  # shorter than one FFT window: padded as the reference pads it
    }[signal]
    ref = MusicgenMelodyFeatureExtractor()(audio.numpy(), sampling_rate=32000, return_tensors="pt")["input_features"][0]
    ours = ChromaExtractor()(audio)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)


def test_stereo_melody_is_averaged_to_mono():
    left = tones(2.0)
    stereo = torch.stack([left, left])
    ext = ChromaExtractor()
    assert torch.equal(ext(stereo), ext(left))


def test_fast_path_follows_the_exact_path(melody_models):
    """The live kernels (fused Q/K/V, fused heads) on a melody checkpoint: the same greedy codes
    for the most part (they round differently), the same shape, never an error."""
    hf, _, exact = melody_models("melody-h64-l2-h4")
    fast = MusicGen.load(exact.source, progress=None)
    chroma = exact.chroma(tones(2.0))
    a = render(
        exact,
        "",
        80,
        SamplingParams(cfg=3.0, top_k=1),
        condition=exact.melody_condition("x", None, True, chroma=chroma),
    )
    b = render(
        fast, "", 80, SamplingParams(cfg=3.0, top_k=1), condition=fast.melody_condition("x", None, True, chroma=chroma)
    )
    assert a.codes.shape == b.codes.shape
    assert (a.codes == b.codes).float().mean() > 0.9


def test_melody_on_a_text_only_checkpoint_is_refused_in_a_sentence(tiny):
    with pytest.raises(ContextError, match="no melody conditioning"):
        tiny.melody_condition("x", tones(1.0)[None], guided=True)
