"""Sampling. Protects: greedy = argmax, top-k / top-p support, seeded reproducibility, CFG order."""

import pytest
import torch
from musicgen_live.engine.sampling import SamplingParams, guide, sample


def logits(seed=0):
    return torch.randn(4, 2048, generator=torch.Generator().manual_seed(seed))


def test_greedy_is_argmax_with_lowest_index_on_ties():
    x = torch.zeros(2, 10)
    x[0, 3] = x[0, 7] = 1.0
    assert sample(x, SamplingParams(greedy=True), None).tolist() == [3, 0]


def test_top_k_only_draws_from_the_k_best():
    x = logits()
    allowed = torch.topk(x, 5, dim=-1).indices
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        tok = sample(x, SamplingParams(top_k=5), gen)
        assert all(tok[i] in allowed[i] for i in range(4))


def test_top_p_keeps_the_smallest_set_reaching_p():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample(x, SamplingParams(top_k=0, top_p=0.7), gen)) for _ in range(300)}
    assert seen == {0, 1}


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=4),
        SamplingParams(temperature=1.5, top_k=0, top_p=0.9),
        SamplingParams(top_k=5, top_p=0.8),
    ],
)
def test_draws_follow_the_filtered_softmax(params):
    """The exponential race must draw each kept token with its softmax probability (20k draws)."""
    x = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    draws = sample(x.expand(20000, -1), params, torch.Generator().manual_seed(3))
    got = torch.bincount(draws, minlength=6).float() / 20000
    scores = x / params.temperature
    keep = torch.ones(6, dtype=torch.bool)
    if params.top_k:
        keep[params.top_k :] = False
    if params.top_p:
        p = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        before = torch.cumsum(p, 0) - p  # mass of the more likely tokens
        keep &= before < params.top_p
    want = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    assert torch.allclose(got, want, atol=0.015), (got, want)


def test_same_seed_same_tokens():
    p = SamplingParams(temperature=1.3, top_k=100, top_p=0.95)
    a = [sample(logits(s), p, torch.Generator().manual_seed(9)) for s in range(5)]
    b = [sample(logits(s), p, torch.Generator().manual_seed(9)) for s in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_guidance_is_transformers_guidance_to_the_bit():
    """transformers' own CFG processor (the conditional rows first, the unconditional after), not a
    restatement of our formula: a different op order would differ in the last bits."""
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

    c, u = torch.stack([logits(1), logits(3)]), torch.stack([logits(2), logits(4)])
    for cfg in (1.5, 3.0, 7.25):
        want = ClassifierFreeGuidanceLogitsProcessor(cfg)(torch.zeros(2, 1, dtype=torch.long), torch.cat([c, u]))
        assert torch.equal(guide(c, u, cfg), want)
        assert not torch.equal(guide(c, u, cfg), c * cfg - u * (cfg - 1))  # the bits do tell op orders apart


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(top_k=-1), dict(top_p=1.5), dict(cfg=-1)])
def test_out_of_range_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validated()
