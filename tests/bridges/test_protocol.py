"""The shared command vocabulary (OSC and WebSocket both speak it). Protects: loose numbers and
clamping, triggers, prompts, weighted prompts, queries, the Tidal alias, and continue/file never
reading outside its folders."""

from __future__ import annotations

import json

import pytest

from bridges.protocol import ProtocolError, Reply, Vocabulary
from streamer import commands as c

SNAP = {"cfg": 3.0, "top_k": 250, "prompts": [{"text": "dub", "weight": 1.0}], "seconds": 12.5, "state": "playing"}


@pytest.fixture
def vocab(tmp_path):
    (tmp_path / "loops").mkdir()
    (tmp_path / "loops" / "a.wav").write_bytes(b"")
    return Vocabulary(lambda: SNAP, {"model": "tiny"}, [str(tmp_path / "loops")])


@pytest.mark.parametrize(
    "args, expected",
    [([4.5], 4.5), ([4], 4.0), (["4.5"], 4.5), ([True], 1.0), ([99.0], 20.0), ([-3], 0.0)],
)
def test_numbers_are_accepted_loosely_and_clamped(vocab, args, expected):
    out = vocab.handle("cfg", args)
    assert out.commands == [c.SetParams(cfg=expected)]
    assert out.echo == [Reply("cfg", (expected,))]


def test_integers_from_float_senders_round(vocab):
    assert vocab.handle("/top_k", [40.0]).commands == [c.SetParams(top_k=40)]
    assert vocab.handle("seed", [7.6]).commands == [c.SetSeed(8)]


def test_fader_variants_map_0_1_onto_the_range(vocab):
    assert vocab.handle("cfg/norm", [0.5]).commands == [c.SetParams(cfg=10.0)]
    assert vocab.handle("top_p/norm", [1.0]).commands == [c.SetParams(top_p=1.0)]


@pytest.mark.parametrize("args, fires", [([], True), ([1], True), ([0.5], True), ([0.0], False), ([0.2], False)])
def test_triggers_fire_on_no_argument_or_at_least_half(vocab, args, fires):
    assert vocab.handle("play", args).commands == ([c.Play()] if fires else [])


def test_prompt_joins_all_its_arguments(vocab):
    out = vocab.handle("prompt", ["deep", "house", 120, "bpm"])
    assert out.commands == [c.SetPrompt("deep house 120 bpm")]


def test_weighted_prompts(vocab):
    out = vocab.handle("prompt/weighted", ["dub", 1.0, "techno", "0.5"])
    assert out.commands == [c.SetWeightedPrompts((("dub", 1.0), ("techno", 0.5)))]


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("cfg", [], "one number"),
        ("cfg", [1, 2], "one number"),
        ("cfg", ["loud"], "needs a number"),
        ("cfg", [float("nan")], "finite"),
        ("temperature", [b"\xff\xfe"], "needs a number"),
        ("prompt/weighted", ["a"], "pairs"),
        ("prompt/weighted", ["a", -1], ">= 0"),
        ("prompt/weighted", ["a", 0], "above 0"),
        ("prompt/weighted", ["a", 1, "b", 1, "c", 1, "d", 1, "e", 1], "at most 4"),
        ("prompt", ["x" * 3000], "too long"),
        ("continue", [-2], "positive"),
        ("get/nothing", [], "cannot get"),
        ("launch/rockets", [], "unknown address"),
        ("ctrl", [], "key and a value"),
    ],
)
def test_bad_input_is_one_sentence(vocab, name, args, message):
    with pytest.raises(ProtocolError, match=message):
        vocab.handle(name, args)


def test_queries(vocab):
    assert vocab.handle("ping", [3]).replies == [Reply("pong", (3,))]
    assert vocab.handle("get/cfg", []).replies == [Reply("cfg", (3.0,))]
    assert vocab.handle("get/prompt", []).replies == [Reply("prompt", ("dub",))]
    state = json.loads(vocab.handle("get/state", []).replies[0].args[0])
    assert state["state"] == "playing"
    assert json.loads(vocab.handle("info", []).replies[0].args[0]) == {"model": "tiny"}


def test_tidal_style_ctrl_alias(vocab):
    assert vocab.handle("ctrl", ["cfg", 5]).commands == [c.SetParams(cfg=5.0)]


def test_continue_file_reads_only_inside_its_folders(vocab, tmp_path):
    ok = vocab.handle("continue/file", ["a.wav", 4])
    assert ok.commands == [c.ContinueFile(str((tmp_path / "loops" / "a.wav").resolve()), 4.0)]
    (tmp_path / "secret.wav").write_bytes(b"")
    for sneaky in ["../secret.wav", str(tmp_path / "secret.wav"), "/etc/passwd", "loops/../../secret.wav"]:
        with pytest.raises(ProtocolError, match="outside the folders"):
            vocab.handle("continue/file", [sneaky])
    link = tmp_path / "loops" / "link.wav"
    link.symlink_to(tmp_path / "secret.wav")
    with pytest.raises(ProtocolError, match="outside the folders"):
        vocab.handle("continue/file", ["link.wav"])


def test_continue_file_is_off_without_folders():
    v = Vocabulary(lambda: SNAP, {}, [])
    with pytest.raises(ProtocolError, match="disabled"):
        v.handle("continue/file", ["a.wav"])
