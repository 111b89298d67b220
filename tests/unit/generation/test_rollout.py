"""generation/rollout: the prompts x n grid, per-batch seeds, response log-prob slicing and provenance, on a
scripted backend (the real backend's log-probs are checked in tests/e2e/test_generation.py)."""

import json

import pytest
import torch

from megatron_align.config.sampling import SamplingParams
from megatron_align.generation.errors import GenerationError
from megatron_align.generation.interface import GenerationOutput
from megatron_align.generation.rollout import logprob_kind, rollout


class _Tok:
    def text_to_ids(self, text):
        return [int(w) for w in text.split()]

    def ids_to_text(self, ids):
        return " ".join(str(i) for i in ids)


class _Scripted:
    """Prompt ``"a b"`` -> ids [a, b]; the response of row r in a call seeded s is [100 + s, 200 + r] (the
    second token stops it when ``finish``); log-prob of the token at position t is -t / 10."""

    name = "scripted"
    logprob_kind = "sampling"

    def __init__(self, max_batch_size=4):
        self.tokenizer, self.max_batch_size, self.calls = _Tok(), max_batch_size, []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        rows = [self.tokenizer.text_to_ids(p) + [100 + (params.random_seed or 0), 200 + r]
                for r, p in enumerate(prompts)]
        width = max(map(len, rows))
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = torch.tensor(r)
        lp = -torch.arange(1, width, dtype=torch.float32).repeat(len(rows), 1) / 10  # [B, T-1]
        return GenerationOutput(tokens=tokens, prompt_lengths=torch.tensor([len(r) - 2 for r in rows]),
                                lengths=torch.tensor([len(r) for r in rows]),
                                logprobs=lp if params.compute_logprob else None,
                                is_end=torch.tensor([r % 2 == 0 for r in range(len(rows))]))


def test_grid_batches_seeds_and_provenance():
    backend = _Scripted(max_batch_size=4)
    prompts = ["1 2", "3", "4 5 6"]
    params = SamplingParams(random_seed=10, compute_logprob=True, temperature=0.7)
    recs = rollout(backend, prompts, 2, params, checkpoint="/ckpt/policy")
    assert [(r.prompt_index, r.sample_index) for r in recs] == [(p, s) for p in range(3) for s in range(2)]
    assert [len(c[0]) for c in backend.calls] == [4, 2]  # batches of max_batch_size rows
    assert [c[1].random_seed for c in backend.calls] == [10, 11]  # batch b: random_seed + b
    assert [r.provenance.seed for r in recs] == [10, 10, 10, 10, 11, 11]
    assert [r.provenance.batch for r in recs] == [0, 0, 0, 0, 1, 1]
    assert recs[4].response_ids == [111, 200] and recs[2].response_ids == [110, 202]
    assert recs[0].response == " 110 200" and recs[0].prompt == "1 2"
    assert [r.finished for r in recs] == [True, False, True, False, True, False]
    # "1 2" + 2 response tokens: the response's log-probs are positions 2, 3 -> -0.2, -0.3
    assert recs[0].logprobs == pytest.approx([-0.2, -0.3])
    assert recs[4].logprobs == pytest.approx([-0.3, -0.4])  # "4 5 6": positions 3, 4
    prov = recs[0].provenance
    assert prov.checkpoint == "/ckpt/policy" and prov.backend == "scripted" and prov.logprob == "sampling"
    assert prov.sampling["temperature"] == 0.7 and prov.sampling["random_seed"] == 10
    json.dumps(recs[0].to_json())  # one JSONL line


def test_logprob_kind_names_what_logprobs_hold():
    backend = _Scripted()
    assert logprob_kind(backend, SamplingParams()) is None  # not computed
    recs = rollout(backend, ["1"], 1, SamplingParams())
    assert recs[0].logprobs is None and recs[0].provenance.logprob is None
    assert logprob_kind(backend, SamplingParams(compute_logprob=True)) == "raw"  # the model's distribution
    for changed in (dict(temperature=0.5), dict(top_k=5), dict(top_p=0.9), dict(repetition_penalty=1.1),
                    dict(greedy=True), dict(min_tokens_to_generate=1)):
        assert logprob_kind(backend, SamplingParams(compute_logprob=True, **changed)) == "sampling", changed
    assert logprob_kind(object(), SamplingParams(compute_logprob=True, top_k=5)) == "raw"  # default


def test_unseeded_and_bad_requests():
    backend = _Scripted(max_batch_size=8)
    recs = rollout(backend, ["1", "2"], 3, SamplingParams())
    assert len(backend.calls) == 1 and all(r.provenance.seed is None for r in recs)
    with pytest.raises(GenerationError, match="n=0"):
        rollout(backend, ["1"], 0, SamplingParams())
    with pytest.raises(GenerationError, match="sampling: top_p"):
        rollout(backend, ["1"], 1, SamplingParams(top_p=2.0))
    backend.tokenizer = None
    with pytest.raises(GenerationError, match="no tokenizer"):
        rollout(backend, ["1"], 1, SamplingParams())
