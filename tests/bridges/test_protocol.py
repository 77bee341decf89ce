"""The shared command vocabulary (OSC, WebSocket and stdin all speak it). Protects: loose numbers
clamped with a note, triggers, prompts (never empty), prompt crossfades, weighted prompts, queries
answered in command order, the Tidal alias (one level only), continue/file never reading outside its
folders, the WebSocket update's fade rule, and the OSC echo of changes."""

from __future__ import annotations

import json

import pytest
from musicgen_live.bridges.protocol import Outcome, ProtocolError, Reply, Vocabulary, answer_line, state_replies
from musicgen_live.streamer import commands as c

STATE = {"cfg": 3.0, "top_k": 250, "prompts": [{"text": "dub", "weight": 1.0}], "seconds": 12.5, "state": "playing"}


@pytest.fixture
def vocab(tmp_path):
    (tmp_path / "loops").mkdir()
    (tmp_path / "loops" / "a.wav").write_bytes(b"")
    return Vocabulary({"model": "tiny"}, [str(tmp_path / "loops")])


@pytest.mark.parametrize(
    "args, expected, clamped",
    [
        ([4.5], 4.5, False),
        ([4], 4.0, False),
        (["4.5"], 4.5, False),
        ([True], 1.0, False),
        ([99.0], 20.0, True),
        ([-3], 0.0, True),
    ],
)
def test_numbers_are_accepted_loosely_and_clamped_with_a_note(vocab, args, expected, clamped):
    out = vocab.handle("cfg", args)
    assert out.commands == [c.Set("cfg", expected)]
    assert out.notes == ([f"cfg {args[0]:g} is outside 0..20: {expected:g} will sound"] if clamped else [])


def test_integers_from_float_senders_round(vocab):
    assert vocab.handle("/top_k", [40.0]).commands == [c.Set("top_k", 40)]
    out = vocab.handle("seed", [7.6])
    assert out.commands == [c.Set("seed", 8)] and out.notes == []  # rounding is not clamping


def test_fader_variants_map_0_1_onto_the_range(vocab):
    assert vocab.handle("cfg/norm", [0.5]).commands == [c.Set("cfg", 10.0)]
    assert vocab.handle("top_p/norm", [1.0]).commands == [c.Set("top_p", 1.0)]
    assert vocab.handle("gain/norm", [7.0]).commands == [c.Set("gain", 4.0)]


@pytest.mark.parametrize("args, fires", [([], True), ([1], True), ([0.5], True), ([0.0], False), ([0.2], False)])
def test_triggers_fire_on_no_argument_or_at_least_half(vocab, args, fires):
    assert vocab.handle("play", args).commands == ([c.Play()] if fires else [])


def test_prompts(vocab):
    assert vocab.handle("prompt", ["deep", "house", 120, "bpm"]).commands == [c.SetPrompt("deep house 120 bpm")]
    assert vocab.handle("prompt/fade", ["4", "slow", "strings"]).commands == [c.SetPrompt("slow strings", fade_s=4.0)]
    out = vocab.handle("prompt/weighted", ["dub", 1.0, "techno", "0.5"])
    assert out.commands == [c.SetWeightedPrompts((("dub", 1.0), ("techno", 0.5)))]


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("cfg", [], "cfg takes one number, got 0 arguments"),
        ("cfg", [1, 2], "cfg takes one number, got 2 arguments"),
        ("cfg", ["loud"], "cfg needs a number, got 'loud'"),
        ("cfg", [float("nan")], "cfg needs a finite number"),
        ("seed", [10**400], "seed needs a finite number, got a 401-digit integer"),
        ("temperature", [b"\xff\xfe"], "temperature needs a number"),
        ("prompt", [], "prompt needs some text"),
        ("prompt", ["  "], "prompt needs some text"),
        ("prompt", ["x" * 3000], "too long"),
        ("prompt/fade", ["4"], "prompt/fade takes a number of seconds and the prompt"),
        ("prompt/weighted", ["a"], "pairs"),
        ("prompt/weighted", ["", 1], "every prompt needs some text"),
        ("prompt/weighted", ["a", -1], "prompt weights must be >= 0, got -1"),
        ("prompt/weighted", ["a", 0], "above 0"),
        ("prompt/weighted", ["a", 1, "b", 1, "c", 1, "d", 1, "e", 1], "at most 4 prompts can sound at once, got 5"),
        ("fade", [4, "warm", "dub"], "to crossfade to a prompt over S seconds send prompt/fade S TEXT"),
        ("continue", [-2], "continue needs a positive number of seconds, got -2"),
        ("continue", [1, 2], "continue takes at most one number"),
        ("get/nothing", [], "cannot get 'nothing'"),
        ("launch/rockets", [], "unknown command 'launch/rockets'"),
        ("ctrl", ["cfg"], "ctrl needs a key and a value"),
        ("ctrl", ["ctrl", "cfg", 3], "ctrl cannot carry another ctrl"),
        ("prompt", ["w"] * 65, "'prompt' takes at most 64 arguments"),
    ],
)
def test_bad_input_is_one_sentence(vocab, name, args, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vocab.handle(name, args)


def test_queries_wait_for_the_state_and_answer_from_it(vocab):
    assert vocab.handle("get/cfg", []) == Outcome(query="cfg")
    assert vocab.handle("status", []) == Outcome(query="state")  # the console's word for it
    assert vocab.answer("cfg", STATE) == Reply("cfg", (3.0,))
    assert vocab.answer("prompt", STATE) == Reply("prompt", ("dub",))
    assert vocab.answer("transport", STATE) == Reply("transport", ("playing",))
    assert vocab.answer("position", STATE) == Reply("position", (12.5,))
    assert json.loads(vocab.answer("state", STATE).args[0])["state"] == "playing"
    assert vocab.handle("ping", [3]).replies == [Reply("pong", (3,))]
    assert json.loads(vocab.handle("info", []).replies[0].args[0]) == {"model": "tiny"}


def test_tidal_style_ctrl_alias(vocab):
    assert vocab.handle("ctrl", ["cfg", 5]).commands == [c.Set("cfg", 5.0)]


def test_continuations_are_capped_with_a_note(vocab):
    out = vocab.handle("continue-input", [200])  # the old stdin spelling is an alias
    assert out.commands == [c.ContinueInput(30.0)]
    assert out.notes == ["continue/input 200 s is more than 30 s: asking for 30 s"]
    assert vocab.handle("continue", []).commands == [c.ContinueHistory(10.0)]


def test_continue_file_reads_only_inside_its_folders(vocab, tmp_path):
    ok = vocab.handle("continue/file", ["a.wav", 4])
    loops = str((tmp_path / "loops").resolve())
    assert ok.commands == [c.ContinueFile(str((tmp_path / "loops" / "a.wav").resolve()), 4.0, (loops,))]
    (tmp_path / "secret.wav").write_bytes(b"")
    for sneaky in ["../secret.wav", str(tmp_path / "secret.wav"), "/etc/passwd", "loops/../../secret.wav"]:
        with pytest.raises(ProtocolError, match="outside the folders"):
            vocab.handle("continue/file", [sneaky])
    link = tmp_path / "loops" / "link.wav"
    link.symlink_to(tmp_path / "secret.wav")
    with pytest.raises(ProtocolError, match="outside the folders"):
        vocab.handle("continue/file", ["link.wav"])


def test_continue_file_is_off_without_folders():
    with pytest.raises(ProtocolError, match="disabled"):
        Vocabulary({}, []).handle("continue/file", ["a.wav"])


def test_a_websocket_update_with_a_prompt_and_a_fade_fades_that_prompt_only(vocab):
    assert vocab.update({"prompt": "glass", "fade": 4}).commands == [c.SetPrompt("glass", fade_s=4.0)]
    assert vocab.update({"fade": 4}).commands == [c.Set("fade", 4.0)]  # alone: the default fade
    out = vocab.update({"cfg": 99, "weighted_prompts": [["a", 1], ["b", 1]], "fade": 2})
    assert out.commands == [c.Set("cfg", 20.0), c.SetWeightedPrompts((("a", 1.0), ("b", 1.0)), fade_s=2.0)]
    assert out.notes == ["cfg 99 is outside 0..20: 20 will sound"]
    with pytest.raises(ProtocolError, match="does not know 'volume'"):
        vocab.update({"volume": 3})


def test_changes_become_the_osc_messages_every_subscriber_gets():
    assert state_replies({"cfg": 4.5, "state": "paused"}) == [Reply("cfg", (4.5,)), Reply("transport", ("paused",))]
    assert state_replies({"prompts": [{"text": "dub", "weight": 1.0}]}) == [Reply("prompt", ("dub",))]
    blend = [{"text": "dub", "weight": 1.0}, {"text": "techno", "weight": 0.5}]
    assert state_replies({"prompts": blend}) == [Reply("prompt/weighted", ("dub", 1.0, "techno", 0.5))]


def test_the_console_answers_each_ticket_in_one_line():
    t = c.Ticket(c.Set("cfg", 4.0), frame=12)
    assert answer_line(t) == "ok: cfg at frame 12"
    t.note = "context 5.00 s: the most this window keeps"
    assert answer_line(t) == "ok: cfg at frame 12 (context 5.00 s: the most this window keeps)"
    t.error = "nope"
    assert answer_line(t) == "error: nope"
