"""Parity with audiocraft itself, for checkpoints in audiocraft's own format.

Protects: a random MusicGen built by audiocraft's builders and exported as audiocraft exports it
(state_dict.bin + compression_state_dict.bin) loads through our loader and gives greedy codes
token-exact with audiocraft's `LMModel.generate` - mono and stereo, guidance 1 / 3 / 5.5, with and
without an audio prompt, guidance batched (one forward) and two-step (audiocraft's `two_step_cfg`);
its EnCodec encodes and decodes (streamed, 1 and 7 frames a push) as audiocraft's does; a codec
given as a pointer to a transformers EnCodec loads from `audio_encoder/`; and every layout we
cannot run is refused in one sentence that names what is wrong.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from musicgen_live.engine.errors import CheckpointError
from musicgen_live.engine.lm import Segment
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.render import decode_streamed, render
from musicgen_live.engine.sampling import SamplingParams

from . import audiocraft_reference as ref

FRAMES = 120
PROMPT = "warm analog bass with a four on the floor kick"


@pytest.fixture(scope="module")
def exported(ac, tmp_path_factory):
    """channels -> (directory, audiocraft LM, audiocraft codec), each built once."""
    t5 = ref.random_t5()
    made: dict[int, tuple[Path, Any, Any]] = {}

    def get(channels: int) -> tuple[Path, Any, Any]:
        if channels not in made:
            lm_cfg, codec_cfg = ref.lm_config(channels=channels, n_q=4 * channels), ref.codec_config()
            lm = ref.build_lm(ac, lm_cfg, seed=1 + channels, t5=t5)
            codec = ref.build_codec(ac, codec_cfg, seed=2)
            path = ref.export(tmp_path_factory.mktemp(f"audiocraft-{channels}ch"), lm, lm_cfg, codec, codec_cfg, t5)
            made[channels] = (path, lm, codec)
        return made[channels]

    return get


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("guidance", ["batched", "two-step"])
@pytest.mark.parametrize("cfg", [1.0, 3.0, 5.5])
def test_greedy_codes_match_audiocraft(ac, exported, channels, guidance, cfg):
    path, lm, _ = exported(channels)
    ours = MusicGen.load(str(path), exact=True, guidance=guidance, progress=None)
    assert ours.audio_channels == channels and ours.guidance == guidance
    want = ref.generate(ac, lm, PROMPT, FRAMES, cfg, two_step=guidance == "two-step")
    got = render(ours, PROMPT, FRAMES, SamplingParams(greedy=True, cfg=cfg)).codes
    assert got.shape == want.shape == (4 * channels, FRAMES)
    assert torch.equal(got, want)


@pytest.mark.parametrize("guidance", ["batched", "two-step"])
def test_every_steps_logits_are_within_1e_5_of_audiocrafts(ac, exported, guidance, monkeypatch):
    """Not bit-equal: audiocraft projects Q/K/V with one fused matmul, as transformers does not."""
    path, lm, _ = exported(1)
    ours = MusicGen.load(str(path), exact=True, guidance=guidance, progress=None)
    want = ref.step_logits(ac, lm, PROMPT, 40, 3.0, two_step=guidance == "two-step")
    got: list[torch.Tensor] = []
    forward = ours.lm.forward_segments
    monkeypatch.setattr(ours.lm, "forward_segments", lambda *a, **k: got.append(forward(*a, **k)) or got[-1])
    render(ours, PROMPT, 40, SamplingParams(greedy=True, cfg=3.0))
    assert len(got) == len(want) == 40 + 3
    assert max(float((g - w).abs().max()) for g, w in zip(got, want)) < 1e-5


@pytest.mark.parametrize("guidance", ["batched", "two-step"])
def test_continuing_an_audio_prompt_matches_audiocraft(ac, exported, guidance):
    path, lm, codec = exported(1)
    ours = MusicGen.load(str(path), exact=True, guidance=guidance, progress=None)
    audio = 0.1 * torch.randn(1, 640 * 30 + 123, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        prompt_codes = codec.encode(audio[None])[0][0]
    assert torch.equal(ours.encode_audio(audio), prompt_codes)
    want = ref.generate(ac, lm, PROMPT, FRAMES, 3.0, two_step=guidance == "two-step", prompt_codes=prompt_codes)
    got = render(ours, PROMPT, FRAMES, SamplingParams(greedy=True, cfg=3.0), prompt_audio=audio).codes
    assert torch.equal(got, want)


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("chunk", [1, 7])
def test_streamed_decode_matches_audiocraft(exported, channels, chunk):
    path, _, codec = exported(channels)
    ours = MusicGen.load(str(path), progress=None)
    codes = torch.randint(0, 2048, (4 * channels, 60), generator=torch.Generator().manual_seed(chunk))
    with torch.no_grad():  # audiocraft's stereo wrapper: channel c holds codebooks c, c + 2, ...
        want = torch.cat([codec.decode(codes[c::channels][None])[0] for c in range(channels)])
    got = decode_streamed(ours, codes, chunk)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))


def test_the_command_line_renders_an_audiocraft_checkpoint_as_audiocraft_does(ac, exported, tmp_path, capsys):
    import numpy as np
    import soundfile as sf
    from musicgen_live.bridges.cli import main

    path, lm, codec = exported(1)
    wav, npy = tmp_path / "a.wav", tmp_path / "a.npy"
    argv = ["render", "--model", str(path), "--exact", "--guidance", "two-step", "--greedy", "--cfg", "4"]
    code = main([*argv, "--prompt", PROMPT, "--frames", "50", "--out", str(wav), "--codes-out", str(npy)])
    assert code == 0, capsys.readouterr().err
    want = ref.generate(ac, lm, PROMPT, 50, 4.0, two_step=True)
    assert np.array_equal(np.load(npy), want.numpy())
    audio, rate = sf.read(str(wav), dtype="float32")
    with torch.no_grad():
        reference = codec.decode(want[None])[0, 0].numpy()
    assert rate == 32000 and np.abs(audio - reference).max() < 1e-4  # the file is 16- or 32-bit


def test_two_step_guidance_is_one_forward_per_kind_of_row(exported):
    """Two-step: every segment's conditional rows run in one forward, the unconditional rows in a
    second, each writing its own rows of its segment's cache; logits come back in the order of one
    forward. Segments as a live step shares them: a stream crossfading two prompts (3 rows), a
    window being prefilled beside it (4 columns, no logits) and an unguided stream (1 row)."""
    path, _, _ = exported(1)
    lm = MusicGen.load(str(path), guidance="two-step", progress=None).lm
    cond = MusicGen.load(str(path), progress=None).conditioner.condition(PROMPT).cross
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 2, 1, True), (2, 1, 4, False), (1, 1, 1, True)]  # rows, conditional rows, columns, logits
    tokens = [torch.randint(0, 2048, (r, 4, c), generator=gen) for r, _, c, _ in shapes]
    caches = [lm.new_cache(r, 16) for r, *_ in shapes]
    segs = [Segment(r, 3, cache, [cond] * n, columns=c, logits=w) for (r, n, c, w), cache in zip(shapes, caches)]
    got = lm.forward_segments(tokens, segs)
    # the same as two plain forwards over fresh caches of just those rows
    kinds = [[(0, n), (n, r)] for r, n, *_ in shapes]
    alone = [[lm.new_cache(b - a, 16) for a, b in k] for k in kinds]
    out = []
    for which in (0, 1):
        parts = [(t[k[which][0] : k[which][1]], s, c[which]) for t, s, k, c in zip(tokens, segs, kinds, alone)]
        parts = [(t, s, c) for t, s, c in parts if t.shape[0]]
        plain = [Segment(t.shape[0], 3, c, s.conds[: t.shape[0]] if which == 0 else [], columns=s.columns,
                         logits=s.logits) for t, s, c in parts]  # fmt: skip
        out.append(lm._forward([t for t, _, _ in parts], plain, False, False))
    # one forward's order: stream 1's rows (2 conditional, 1 not), then stream 3's single row
    assert torch.equal(got, torch.cat([out[0][:2], out[1][:1], out[0][2:3]]))
    for cache, (cond_rows, uncond_rows), (r, n, *_) in zip(caches, alone, shapes):
        assert torch.equal(cache.k[:, :n, :, 3:8], cond_rows.k[:, :, :, 3:8])
        if r > n:
            assert torch.equal(cache.v[:, n:, :, 3:8], uncond_rows.v[:, :, :, 3:8])


def test_a_checkpoint_trained_with_two_step_guidance_runs_it_unless_told_otherwise(exported, tmp_path):
    path, _, _ = exported(1)
    variant = _variant(path, tmp_path / "two-step", cfg=lambda c: c["transformer_lm"].update(two_step_cfg=True))
    assert MusicGen.load(str(variant), progress=None).guidance == "two-step"
    assert MusicGen.load(str(variant), guidance="batched", progress=None).guidance == "batched"
    assert MusicGen.load(str(path), progress=None).guidance == "batched"


def test_a_codec_pointer_loads_the_transformers_encodec_beside_it(exported, tmp_path):
    from transformers import EncodecConfig, EncodecModel

    from tests.conftest import SLIM_CODEC

    path, _, _ = exported(1)
    variant = _variant(path, tmp_path / "pointer")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True}, variant / "compression_state_dict.bin")
    torch.manual_seed(4)
    hf = EncodecModel(EncodecConfig(**SLIM_CODEC)).eval()
    with torch.no_grad():
        for layer in hf.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
    hf.save_pretrained(variant / "audio_encoder")
    ours = MusicGen.load(str(variant), progress=None)
    codes = torch.randint(0, 2048, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf.decode(codes[None, None], [None]).audio_values[0]
    got = decode_streamed(ours, codes, 1)
    assert (got - want[..., : got.shape[-1]]).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))


def _set(dotted: str, value: Any):
    def edit(cfg: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


BAD_CHECKPOINTS = [
    ("melody conditioner", dict(cfg=_set("conditioners.self_wav", {"model": "chroma_stem"})), "MusicGen-Style ones"),
    ("style by cross-attention", dict(cfg=_set("conditioners.self_wav", {"model": "style"})), "must prepend"),
    ("rope positions", dict(cfg=_set("transformer_lm.positional_embedding", "rope")), "positional_embedding"),
    ("post-norm", dict(cfg=_set("transformer_lm.norm_first", False)), "norm_first"),
    ("unknown pattern", dict(cfg=_set("codebooks_pattern.modeling", "spiral")), "not a codebook pattern"),
    ("prepended text", dict(cfg=_set("fuser.prepend", ["description"])), "cross-attention"),
    ("delays going back", dict(cfg=_set("codebooks_pattern.delay.delays", [0, 2, 1, 3])), "never decrease"),
    ("MAGNeT", dict(cfg=_set("lm_model", "transformer_lm_magnet")), "transformer_lm_magnet"),
    ("extra weight", dict(state=lambda s: s.update({"transformer.layers.0.gate.weight": torch.zeros(2)})), "gate"),
    ("lstm codec norm", dict(codec_cfg=_set("seanet.norm", "time_group_norm")), "seanet.norm"),
    ("renormalising codec", dict(codec_cfg=_set("encodec.renormalize", True)), "non-normalised"),
    ("no codec file", dict(drop="compression_state_dict.bin"), "without 'compression_state_dict.bin'"),
    ("damaged lm file", dict(garble="state_dict.bin"), "could not be read"),
    ("not a package", dict(replace=("state_dict.bin", [1, 2, 3])), "not an audiocraft checkpoint"),
    ("no config", dict(replace=("state_dict.bin", {"best_state": {}})), "no 'xp.cfg'"),
    ("dangling reference", dict(cfg=_set("channels", "${nowhere}")), "not readable"),
]


@pytest.mark.parametrize("changes, message", [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS])
def test_layouts_we_cannot_run_are_refused_by_name(exported, tmp_path, changes, message):
    path, _, _ = exported(1)
    variant = _variant(path, tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError) as err:
        MusicGen.load(str(variant), progress=None)
    assert message in str(err.value), str(err.value)


def test_a_missing_text_encoder_says_where_to_put_one(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    path, _, _ = exported(1)
    variant = _variant(path, tmp_path / "no-t5")
    shutil.rmtree(variant / "text_encoder")
    with pytest.raises(CheckpointError) as err:
        MusicGen.load(str(variant), progress=None)
    assert "text encoder" in str(err.value) and str(variant / "text_encoder") in str(err.value)


def test_two_step_guidance_is_refused_for_a_melody_checkpoint():
    with pytest.raises(CheckpointError, match="two-step guidance runs on text"):
        MusicGen.load("tiny-melody", guidance="two-step", progress=None)
    with pytest.raises(CheckpointError, match="guidance 'three-step'"):
        MusicGen.load("tiny", guidance="three-step", progress=None)


def _variant(path: Path, dest: Path, cfg=None, codec_cfg=None, state=None, drop=None, garble=None, replace=None):
    """A copy of the exported checkpoint at `path` with one thing changed."""
    from omegaconf import OmegaConf

    shutil.copytree(path, dest)
    for name, edit_cfg, edit_state in (
        ("state_dict.bin", cfg, state),
        ("compression_state_dict.bin", codec_cfg, None),
    ):
        if edit_cfg is None and edit_state is None:
            continue
        pkg = torch.load(dest / name, weights_only=True)
        if edit_cfg is not None:
            conf = OmegaConf.to_container(OmegaConf.create(pkg["xp.cfg"]))
            edit_cfg(conf)
            pkg["xp.cfg"] = OmegaConf.to_yaml(conf)
        if edit_state is not None:
            edit_state(pkg["best_state"])
        torch.save(pkg, dest / name)
    if drop:
        (dest / drop).unlink()
    if garble:
        (dest / garble).write_bytes(b"not a torch file")
    if replace:
        torch.save(replace[1], dest / replace[0])
    return dest
