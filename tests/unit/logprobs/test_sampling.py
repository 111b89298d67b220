"""logprobs/sampling: the teacher-forced log-probs of the sampling distribution against the float64 reference
of tests/sampling_reference.py, and against the draws of generation/sampling.choose_tokens."""

import math

import pytest
import torch

from megatron_align.config.sampling import SamplingParams
from megatron_align.logprobs.sampling import ChoiceRules, sampling_token_logprobs, seen_before
from tests.sampling_reference import processed_logprob

V_PADDED, VOCAB, EOS = 48, 40, 2

SETTINGS = {
    "raw": dict(temperature=1.0),
    "temperature": dict(temperature=0.7),
    "top_k": dict(temperature=0.9, top_k=7),
    "top_p": dict(temperature=1.3, top_p=0.8),
    "repetition": dict(repetition_penalty=1.4),
    "min_tokens": dict(min_tokens_to_generate=4),
    "everything": dict(temperature=0.8, top_k=12, top_p=0.9, repetition_penalty=1.2,
                       min_tokens_to_generate=3),
}


def _sequence(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(30, V_PADDED, generator=g) * 3  # [S, Vp] raw
    ids = torch.randint(0, 12, (30,), generator=g)  # [S] small ids: repeats, eos (2) inside the response
    return logits, ids


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_token_equals_the_float64_reference(name):
    params = SamplingParams(tokens_to_generate=30, **SETTINGS[name])
    rules = ChoiceRules(params, EOS, VOCAB)
    excluded = 0
    for seed in range(3):
        logits, ids = _sequence(seed)
        if name == "min_tokens":
            ids[10] = EOS  # the second response token: eos is blocked there
        start = 9
        got = sampling_token_logprobs(logits, ids, start, rules, block=7)  # [S - start], blocks cut positions
        want = [processed_logprob(logits[j - 1].tolist(), int(ids[j]), ids[:j].tolist(), j - start, params,
                                  EOS, VOCAB) for j in range(start, len(ids))]
        assert len(got) == len(want)
        for g, w in zip(got.tolist(), want):
            assert (g == w == -math.inf) or g == pytest.approx(w, abs=2e-5), (name, seed)
        excluded += int((~torch.isfinite(got)).sum())
    assert (excluded > 0) == (name in ("top_k", "top_p", "min_tokens", "everything")), excluded


def test_raw_settings_are_the_log_softmax_over_the_real_vocabulary():
    logits, ids = _sequence(5)
    got = sampling_token_logprobs(logits, ids, 1, ChoiceRules(SamplingParams(), None, V_PADDED))
    want = torch.log_softmax(logits[:-1].double(), -1).gather(-1, ids[1:, None])[:, 0]
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_seen_before_marks_ids_strictly_before_each_position():
    ids = torch.tensor([3, 1, 3, 0, 2])
    seen = seen_before(ids, torch.tensor([1, 3, 5]), 5)
    assert seen.tolist() == [[False, False, False, True, False], [False, True, False, True, False],
                             [True, True, True, True, False]]


def test_the_sampler_draws_from_this_density():
    """choose_tokens' empirical frequencies at one position match exp(sampling_token_logprobs) of each id, and
    it never draws an id the density excludes."""
    from megatron_align.generation.sampling import choose_tokens

    params = SamplingParams(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.3)
    rules = ChoiceRules(params, EOS, VOCAB)
    logits, ids = _sequence(7)
    prefix = ids[:6]
    row = logits[5:6]  # [1, Vp] predicting position 6
    lps = [sampling_token_logprobs(logits[:7], torch.cat([prefix, torch.tensor([v])]), 6, rules)[0]
           for v in range(V_PADDED)]
    density = torch.stack(lps).exp()  # [Vp]
    assert density.sum().item() == pytest.approx(1.0, abs=1e-5)
    n = 20000
    seen = torch.zeros(n, V_PADDED, dtype=torch.bool)
    seen[:, prefix] = True
    draws = choose_tokens(row.expand(n, -1), rules, torch.zeros(n, dtype=torch.long), seen,
                          torch.Generator().manual_seed(0))  # [n]
    freq = torch.bincount(draws, minlength=V_PADDED).double() / n
    assert (freq[density == 0] == 0).all()
    assert (freq - density.double()).abs().max().item() < 0.015


def test_greedy_has_no_density():
    logits, ids = _sequence(0)
    with pytest.raises(ValueError, match="greedy"):
        sampling_token_logprobs(logits, ids, 3, ChoiceRules(SamplingParams(greedy=True), None, None))
