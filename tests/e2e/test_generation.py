"""``MegatronGenerationBackend`` on tiny random transformers models converted to megatron (CPU, TP=1, PP=1).

References, all independent of the code under test:
- transformers ``generate`` (greedy, left padding + attention mask; its repetition penalty) for the tokens;
- a teacher-forced ``GPTModel.forward`` of each finished row alone (no padding, no cache) for the log-probs;
- ``use_kv_cache=False`` (the whole sequence through ``GPTModel.forward`` every step) for both KV caches (the
  lean engine's and megatron's ``StaticInferenceContext``);
- brute-force text search for end strings; hand-made distributions for top-k / top-p.
"""

from __future__ import annotations

import pytest
import torch

from megatron_align.generation import SamplingParams
from tests.e2e.test_hf_parity import make_tiny_hf

transformers = pytest.importorskip("transformers")

VOCAB = 1000
PROMPT_LENGTHS = (5, 11, 3, 8)
ENGINES = [("lean", "left"), ("lean", "right"), ("megatron", "left"), ("megatron", "right")]


# ------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------------------
def _load(kind: str, root):
    from megatron_align.models.checkpoint import load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.hf import import_hf
    from megatron_align.tokenizers import load_tokenizer_from_dir

    hf_dir = make_tiny_hf(kind, root / "hf")
    ckpt = import_hf(hf_dir, root / "ckpt")
    model = build_gpt_model(read_model_config(ckpt))
    load_checkpoint(ckpt, model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    return model.eval(), hf, load_tokenizer_from_dir(str(ckpt / "tokenizer"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, megatron_single):
    cache = {}

    def get(kind: str = "llama"):
        if kind not in cache:
            cache[kind] = _load(kind, tmp_path_factory.mktemp(kind))
        return cache[kind]

    return get


def _prompts(lengths=PROMPT_LENGTHS, seed: int = 3, high: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, high, (n,), generator=g).tolist() for n in lengths]


def _backend(model, tokenizer=None, **kw):
    from megatron_align.generation.megatron_backend import MegatronGenerationBackend

    kw.setdefault("max_sequence_length", 64)
    if tokenizer is None:
        kw.setdefault("vocab_size", VOCAB)
    return MegatronGenerationBackend(model, tokenizer, **kw)


def _params(**kw) -> SamplingParams:
    base = dict(greedy=True, tokens_to_generate=12, end_strings=[], compute_logprob=True)
    base.update(kw)
    return SamplingParams(**base)


@torch.no_grad()
def _hf_greedy(hf, prompts, new_tokens, **kw) -> list[list[int]]:
    b, longest = len(prompts), max(map(len, prompts))
    ids = torch.zeros(b, longest, dtype=torch.long)
    mask = torch.zeros(b, longest, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                      eos_token_id=None, pad_token_id=0, **kw)
    return [out[i, longest:].tolist() for i in range(b)]


@torch.no_grad()
def _teacher_forced(model, out) -> torch.Tensor:
    """Log-probs ``[B, T-1]`` of each row's own tokens from one plain forward per row (0 at prompt tokens)."""
    lp = torch.zeros_like(out.logprobs)
    for i in range(out.tokens.size(0)):
        n, p = int(out.lengths[i]), int(out.prompt_lengths[i])
        tok = out.tokens[i:i + 1, :n]  # [1, n]
        logits = model(tok, torch.arange(n).unsqueeze(0), None)  # [1, n, V]
        full = torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, tok[0, 1:, None])[:, 0]  # [n-1]
        lp[i, p - 1:n - 1] = full[p - 1:]
    return lp


# ------------------------------------------------------------------------------------------------------------
# tokens vs transformers
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine, padding", ENGINES + [("nocache", "left")])
def test_greedy_matches_transformers(models, engine, padding):
    model, hf, _ = models("llama")
    prompts = _prompts()
    ref = _hf_greedy(hf, prompts, 12)
    kw = {"use_kv_cache": False} if engine == "nocache" else {"engine": engine}
    backend = _backend(model, padding=padding, **kw)
    assert (backend.lean is not None) == (engine == "lean")
    out = backend.generate(prompts, _params())
    assert [out.response_ids(i) for i in range(len(prompts))] == ref
    assert out.prompt_lengths.tolist() == list(PROMPT_LENGTHS)
    assert out.lengths.tolist() == [n + 12 for n in PROMPT_LENGTHS] and not out.is_end.any()
    assert all(out.tokens[i, :n].tolist() == p for i, (p, n) in enumerate(zip(prompts, PROMPT_LENGTHS)))
    assert out.tokens.shape == (4, max(PROMPT_LENGTHS) + 12)
    assert out.logprobs.shape == (4, out.tokens.size(1) - 1)


@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "mistral"])
@pytest.mark.parametrize("engine", ["lean", "megatron"])
def test_other_families_match_transformers(models, kind, engine):
    """GPT-2 (learned positions counted from each row's first real token, tied head, biases, LayerNorm),
    Qwen2 (QKV biases, tied), Mistral (one KV group: MQA)."""
    model, hf, _ = models(kind)
    prompts = _prompts((4, 9, 6))
    backend = _backend(model, engine=engine, max_sequence_length=32)
    assert (backend.lean is not None) == (engine == "lean")
    out = backend.generate(prompts, _params(tokens_to_generate=10))
    assert [out.response_ids(i) for i in range(3)] == _hf_greedy(hf, prompts, 10)


def test_repetition_penalty_matches_transformers(models):
    model, hf, _ = models("llama")
    prompts = _prompts((7, 7))  # equal lengths: transformers would also penalise its pad ids
    params = _params(tokens_to_generate=16, repetition_penalty=1.8)
    out = _backend(model).generate(prompts, params)
    ref = _hf_greedy(hf, prompts, 16, repetition_penalty=1.8)
    assert [out.response_ids(i) for i in range(2)] == ref
    assert ref != _hf_greedy(hf, prompts, 16)  # the penalty changes the result, so the check has teeth


# ------------------------------------------------------------------------------------------------------------
# log-probs, cache vs recompute, seeds
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine, padding", ENGINES)
def test_logprobs_match_teacher_forced_forward(models, engine, padding):
    model, _, _ = models("llama")
    params = _params(greedy=False, temperature=0.8, top_k=200, top_p=0.95, random_seed=7,
                     tokens_to_generate=14)
    out = _backend(model, engine=engine, padding=padding).generate(_prompts(), params)
    ref = _teacher_forced(model, out)
    assert (out.logprobs - ref).abs().max().item() <= 1e-5
    gen = torch.zeros_like(ref, dtype=torch.bool)
    for i in range(4):
        gen[i, int(out.prompt_lengths[i]) - 1:int(out.lengths[i]) - 1] = True
    assert (out.logprobs[gen] < 0).all() and (out.logprobs[~gen] == 0).all()


@pytest.mark.parametrize("engine, padding", ENGINES)
def test_kv_cache_equals_recompute(models, engine, padding):
    model, _, _ = models("llama")
    params = _params(greedy=False, temperature=1.0, random_seed=11, tokens_to_generate=16)
    cached = _backend(model, engine=engine, padding=padding).generate(_prompts(), params)
    full = _backend(model, use_kv_cache=False, padding=padding).generate(_prompts(), params)
    assert torch.equal(cached.tokens, full.tokens) and torch.equal(cached.lengths, full.lengths)
    assert (cached.logprobs - full.logprobs).abs().max().item() <= 1e-5


def test_seeded_sampling_reproducible_and_seeds_differ(models):
    model, _, _ = models("llama")
    backend = _backend(model)
    run = lambda seed: backend.generate(_prompts(), _params(greedy=False, random_seed=seed)).tokens  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = backend.generate(_prompts(), _params()).tokens
    assert not torch.equal(a, greedy)
    # top_k=1 and a tiny nucleus both leave only the argmax
    for knob in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = backend.generate(_prompts(), _params(greedy=False, random_seed=1, **knob))
        assert torch.equal(sampled.tokens, greedy), knob


def test_larger_batches_run_in_chunks(models):
    model, _, _ = models("llama")
    prompts = _prompts((5, 11, 3, 8, 9))
    small = _backend(model, max_batch_size=2).generate(prompts, _params())
    whole = _backend(model, max_batch_size=8).generate(prompts, _params())
    assert torch.equal(small.tokens, whole.tokens) and torch.equal(small.lengths, whole.lengths)


# ------------------------------------------------------------------------------------------------------------
# stopping
# ------------------------------------------------------------------------------------------------------------
def test_eos_and_min_tokens_to_generate(models):
    model, _, _ = models("llama")
    prompts = _prompts()
    free = _backend(model, eos_id=None).generate(prompts, _params())
    eos = free.response_ids(0)[2]  # make row 0's third greedy token the eos
    stopped = _backend(model, eos_id=eos).generate(prompts, _params())
    for i in range(4):
        resp = free.response_ids(i)
        cut = resp.index(eos) + 1 if eos in resp else len(resp)
        assert stopped.response_ids(i) == resp[:cut]
        assert bool(stopped.is_end[i]) == (eos in resp)
    assert stopped.is_end[0] and len(stopped.response_ids(0)) == 3
    late = _backend(model, eos_id=eos).generate(prompts, _params(min_tokens_to_generate=6))
    for i in range(4):
        resp = late.response_ids(i)
        assert len(resp) >= 6 and eos not in resp[:6]
        assert bool(late.is_end[i]) == (resp[-1] == eos)
    assert late.response_ids(0)[:2] == free.response_ids(0)[:2]


def test_end_string_stops_where_it_completes(models):
    """An end string that ends inside a token stops at that token; earlier text never contained it."""
    model, _, tok = models("llama")
    backend = _backend(model, tok, eos_id=None)
    prompts = ["w1 w2 w3", "w4 w5", "w7 w8 w9 w10"]
    free = backend.generate(prompts, _params(tokens_to_generate=10))
    words = tok.ids_to_text(free.response_ids(1)).split()
    target = f"{words[3]} {words[4][:2]}"  # ends mid-token: the 5th response token of row 1 completes it
    out = backend.generate(prompts, _params(tokens_to_generate=10, end_strings=[target]))
    for i in range(3):
        prompt = free.tokens[i, :int(free.prompt_lengths[i])].tolist()
        resp = free.response_ids(i)
        cut = len(tok.ids_to_text(prompt))
        # brute force: the first k whose decoded prompt + k tokens holds the target reaching past the prompt
        stop = next((k for k in range(1, len(resp) + 1)
                     if tok.ids_to_text(prompt + resp[:k]).find(target, max(0, cut - len(target) + 1)) >= 0),
                    None)
        assert out.response_ids(i) == (resp if stop is None else resp[:stop]), (i, target)
        assert bool(out.is_end[i]) == (stop is not None)
    assert out.is_end[1] and len(out.response_ids(1)) <= 5
    assert out.texts[1] == tok.ids_to_text(out.tokens[1, :int(out.lengths[1])].tolist())
    assert target in out.texts[1] and out.texts[1].endswith(words[4])


def test_eos_names_in_end_strings_mean_eos(models):
    from megatron_align.generation.stopping import StopStrings

    _, _, tok = models("llama")
    assert not StopStrings(["<|endoftext|>", tok.eos_token], tok)
    assert StopStrings(["<|endoftext|>", "w3"], tok).strings == ["w3"]
    assert not StopStrings(["<|endoftext|>"], None)  # the default needs no tokenizer


def test_end_string_inside_prompt_does_not_stop(models):
    model, _, tok = models("llama")
    out = _backend(model, tok, eos_id=None).generate(["w5 w6 w7"], _params(end_strings=["w6"]))
    assert "w6" not in tok.ids_to_text(out.response_ids(0)) or out.is_end[0]
    assert len(out.response_ids(0)) >= 1


def test_min_tokens_also_holds_back_end_strings(models):
    model, _, tok = models("llama")
    backend = _backend(model, tok, eos_id=None)
    free = backend.generate(["w1 w2"], _params(tokens_to_generate=8))
    first = tok.ids_to_text(free.response_ids(0)).split()[0]
    early = backend.generate(["w1 w2"], _params(tokens_to_generate=8, end_strings=[first]))
    assert len(early.response_ids(0)) == 1 and early.is_end[0]
    held = backend.generate(["w1 w2"], _params(tokens_to_generate=8, end_strings=[first],
                                                min_tokens_to_generate=3))
    assert len(held.response_ids(0)) >= 3


# ------------------------------------------------------------------------------------------------------------
# strings, limits, errors
# ------------------------------------------------------------------------------------------------------------
def test_strings_in_texts_out_with_bos(models):
    model, _, tok = models("llama")
    out = _backend(model, tok).generate(["w1 w2 w3", "w4"], _params(add_BOS=True, tokens_to_generate=5))
    assert out.tokens[0, :4].tolist() == [tok.bos_id] + tok.text_to_ids("w1 w2 w3")
    assert out.prompt_lengths.tolist() == [4, 2]
    for i in range(2):
        assert out.texts[i] == tok.ids_to_text(out.tokens[i, :int(out.lengths[i])].tolist())
        assert all(t < tok.vocab_size for t in out.response_ids(i))  # padded vocabulary rows never chosen
    assert out.texts[0].startswith("w1 w2 w3")


def test_too_long_request_and_bad_inputs_raise(models):
    model, _, tok = models("llama")
    backend = _backend(model, max_sequence_length=32)
    with pytest.raises(ValueError, match="max_sequence_length 32"):
        backend.generate([[5] * 25], _params(tokens_to_generate=8))
    backend.generate([[5] * 24], _params(tokens_to_generate=8))  # exactly at the limit is fine
    with pytest.raises(ValueError, match="tokenizer"):
        backend.generate(["w1 w2"], _params())
    with pytest.raises(ValueError, match="empty"):
        backend.generate([[3], []], _params())
    with pytest.raises(ValueError, match="temperature"):
        backend.generate([[3]], _params(greedy=False, temperature=0.0))
    with pytest.raises(ValueError, match="tokenizer"):
        backend.generate([[3]], _params(end_strings=["stop"]))
    with pytest.raises(ValueError, match="learned positions"):
        _backend(models("gpt2")[0], max_sequence_length=65)


def test_zero_new_tokens_and_no_logprobs(models):
    model, _, _ = models("llama")
    out = _backend(model).generate(_prompts(), _params(tokens_to_generate=0))
    assert out.lengths.tolist() == list(PROMPT_LENGTHS) and not out.is_end.any()
    out = _backend(model).generate(_prompts(), _params(compute_logprob=False))
    assert out.logprobs is None


# ------------------------------------------------------------------------------------------------------------
# sampling pieces and the model afterwards
# ------------------------------------------------------------------------------------------------------------
def test_top_k_top_p_filters():
    from megatron_align.generation.sampling import top_k_, top_p_

    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    keep = lambda z: torch.isfinite(z)[0].tolist()  # noqa: E731
    assert keep(top_p_(probs.log(), 0.8)) == [False, True, False, True]
    assert keep(top_p_(probs.log(), 0.81)) == [False, True, True, True]
    assert keep(top_p_(probs.log(), 0.3)) == [False, True, False, False]
    assert keep(top_k_(probs.log(), 2)) == [False, True, False, True]
    assert keep(top_k_(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 2)) == [False, True, True, False]


@pytest.mark.parametrize("temperature", [5e-324, 1e-40, 1e-30, 1e-4])
def test_tiny_temperature_is_argmax_not_nan(temperature):
    """A temperature down to the smallest positive double picks the best token (the server's fuzz found
    ``temperature=5e-324`` ending in NaN probabilities); a usual one samples softmax(z / T)."""
    from megatron_align.generation.interface import SamplingParams
    from megatron_align.generation.sampling import ChoiceRules, choose_tokens

    z = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 5  # [B, V]
    rules = ChoiceRules(SamplingParams(temperature=temperature, top_k=0, top_p=1.0), None, None)
    got = choose_tokens(z, rules, torch.zeros(64, dtype=torch.long), None, torch.Generator().manual_seed(1))
    assert torch.equal(got, z.argmax(-1))
    warm = ChoiceRules(SamplingParams(temperature=0.7, top_k=0, top_p=1.0), None, None)
    got = choose_tokens(z, warm, torch.zeros(64, dtype=torch.long), None, torch.Generator().manual_seed(1))
    ref = torch.multinomial(torch.softmax(z / 0.7, -1), 1, generator=torch.Generator().manual_seed(1))[:, 0]
    assert torch.equal(got, ref)


def test_lean_forward_logits_equal_megatron_forward(models):
    """Prefill of padded rows, then decode steps: the lean stage's logits vs GPTModel.forward's."""
    from megatron_align.generation.layout import attention_mask, make_layout
    from megatron_align.generation.lean_forward import LeanStage

    for kind in ("llama", "gpt2"):
        model = models(kind)[0]
        lay = make_layout(_prompts((3, 7)), 4, 0, True, torch.device("cpu"))
        lay.tokens[:, 7:] = torch.tensor([[11, 12, 13, 14], [21, 22, 23, 24]])
        lean = LeanStage(model, None, 1, 4, 32)
        with torch.inference_mode():
            for q0, q1 in [(0, 7), (7, 8), (8, 9), (9, 10)]:
                mask = attention_mask(lay, q0, q1)
                got = lean.forward(lay.tokens[:, q0:q1], lay.position_ids[:, q0:q1], q0, q1, None, ~mask)
                ref = model(lay.tokens[:, :q1], lay.position_ids[:, :q1], attention_mask(lay, 0, q1))[:, -1]
                assert (got - ref).abs().max().item() <= 1e-5, (kind, q1)


def test_lean_forward_bf16(tmp_path, megatron_single):
    """bf16 weights: cache, rotary tables, activations in bf16; logits within bf16 rounding of megatron's."""
    from megatron_align.generation.layout import attention_mask, make_layout
    from megatron_align.generation.lean_forward import LeanStage
    from megatron_align.models.checkpoint import load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.hf import import_hf

    ckpt = import_hf(make_tiny_hf("llama", tmp_path / "hf"), tmp_path / "ckpt", precision="bf16")
    model = build_gpt_model(read_model_config(ckpt), precision="bf16")
    load_checkpoint(ckpt, model)
    model.eval()
    lay = make_layout(_prompts((3, 7)), 4, 0, True, torch.device("cpu"))
    lean = LeanStage(model, None, 1, 4, 32)
    with torch.inference_mode():
        for q0, q1 in [(0, 7), (7, 8), (8, 9)]:
            got = lean.forward(lay.tokens[:, q0:q1], lay.position_ids[:, q0:q1], q0, q1, None,
                               ~attention_mask(lay, q0, q1))
            ref = model(lay.tokens[:, :q1], lay.position_ids[:, :q1], attention_mask(lay, 0, q1))[:, -1]
            assert got.dtype == torch.bfloat16 and lean.cache[0][0].dtype == torch.bfloat16
            assert (got.float() - ref.float()).abs().max().item() <= 0.1


def test_model_trains_after_generation(models):
    """Generation leaves no inference tensors or paused CPU layer behind: a training step still works."""
    model, _, _ = models("llama")
    _backend(model).generate(_prompts(), _params())
    model.train()
    tok = torch.tensor(_prompts((10, 10)))
    loss = model(tok, torch.arange(10).expand(2, 10), None, labels=tok.roll(-1, 1)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.eval()
    assert torch.empty(2, device="cuda").device.type == "cpu"  # the CPU layer is back on


def test_cpu_layer_pause(megatron_single):
    from megatron_align.distributed import cpu_compat

    if not cpu_compat.cpu_compat_active():
        pytest.skip("needs the CPU compatibility layer (a machine without CUDA)")
    with cpu_compat.paused():
        with pytest.raises((RuntimeError, AssertionError)):
            torch.empty(1, device="cuda")
    assert torch.empty(1, device="cuda").device.type == "cpu"


def test_weights_are_read_live_and_refit(models):
    model, _, _ = models("llama")
    backend = _backend(model)
    before = backend.generate(_prompts(), _params()).tokens
    w = model.decoder.layers[0].mlp.linear_fc2.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(-3.0)  # an in-place update, as an optimizer step makes
        after = backend.generate(_prompts(), _params()).tokens
        assert not torch.equal(after, before)
        assert torch.equal(after, _backend(model).generate(_prompts(), _params()).tokens)
        backend.refit(model)
        assert torch.equal(backend.generate(_prompts(), _params()).tokens, after)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert torch.equal(backend.generate(_prompts(), _params()).tokens, before)


def test_engine_choice_and_config_errors(models):
    model, _, _ = models("llama")
    with pytest.raises(ValueError, match="engine"):
        _backend(model, engine="fast")
    with pytest.raises(ValueError, match="padding"):
        _backend(model, padding="middle")
    assert _backend(model, use_kv_cache=False).lean is None


# ------------------------------------------------------------------------------------------------------------
# rollouts (generation/rollout.py) on the real backend
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_rollout_logprobs_are_the_policys_and_seeds_reproduce(models):
    import dataclasses

    from megatron_align.generation.rollout import rollout

    model, _, tok = models("llama")
    backend = _backend(model, tok, max_batch_size=4)
    prompts = ["w1 w2 w3", "w4 w5", "w7 w8 w9 w10"]
    params = SamplingParams(random_seed=5, compute_logprob=True, tokens_to_generate=6, end_strings=[])
    first = rollout(backend, prompts, 3, params, checkpoint="ckpt")
    again = rollout(backend, prompts, 3, params, checkpoint="ckpt")
    other = rollout(backend, prompts, 3, dataclasses.replace(params, random_seed=6))
    assert [r.response_ids for r in first] == [r.response_ids for r in again]  # same seed, same rollout
    assert [r.response_ids for r in first] != [r.response_ids for r in other]
    assert len({tuple(r.response_ids) for r in first if r.prompt_index == 0}) > 1  # n draws, not copies
    assert [r.provenance.seed for r in first] == [5] * 4 + [6] * 4 + [7]  # 9 rows in batches of 4
    for r in first:
        assert r.provenance.logprob == "raw" and len(r.logprobs) == len(r.response_ids) >= 1
        assert r.finished or len(r.response_ids) == 6  # stopped at eos, or cut by the length limit
        ids = tok.text_to_ids(r.prompt) + r.response_ids
        logits = model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), None)  # [1, T, V]
        lp = torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        p = len(ids) - len(r.response_ids)
        torch.testing.assert_close(torch.tensor(r.logprobs), lp[p - 1:], atol=1e-5, rtol=0)
        assert r.response == tok.ids_to_text(ids)[len(tok.ids_to_text(ids[:p])):]
