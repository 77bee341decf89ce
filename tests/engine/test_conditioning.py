"""Text conditioning. Protects: T5 run a block at a time (as a live stream spreads a new prompt over
its steps) gives transformers' states bit for bit; the LRU answers a prompt heard before at once."""

import pytest
import torch
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.pieces import run


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return MusicGen.load(str(checkpoint_dir("h96-l3-h6-ffn200")), progress=None)


@pytest.mark.parametrize("text", ["a", "slow dub, 70 bpm", "x" * 300])
def test_t5_a_block_at_a_time_equals_transformers(model, text):
    c = model.conditioner
    enc = c.tokenizer([text], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = c.t5(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    steps = c.encode_steps(text)
    pieces = 0
    try:
        while True:
            next(steps)
            pieces += 1
    except StopIteration as done:
        got, _mask = done.value
    assert pieces == len(c.t5.encoder.block) + 1  # a prime, then one yield per block
    assert torch.equal(got, want)


def test_a_prompt_heard_before_costs_nothing(model):
    c = model.conditioner
    first = c.condition("glass harmonica")
    steps = c.condition_steps("glass harmonica")
    with pytest.raises(StopIteration) as done:
        next(steps)  # no piece at all: it is cached
    assert done.value.value is first
    assert c.lookup("glass harmonica") is first and c.lookup("never said") is None
    assert run(c.condition_steps("never said")) is c.lookup("never said")
