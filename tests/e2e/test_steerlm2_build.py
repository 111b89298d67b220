"""The SteerLM 2.0 dataset builder (``examples/nlp/gpt/build_steerlm2_dataset.py``) on tiny random models:

- its records are seed 000's format, readable by the trainer's reader;
- its three log-probs equal independent recomputations to 1e-5: log Q' from the policy's full logits through
  the float64 sampling-distribution reference (tests/sampling_reference.py: top-k, top-p, repetition penalty,
  temperature, padded vocabulary cut), log P(y|x) by a float64 log-softmax, log P(a|x,y) from the reward
  model's predictions through the discretized Gaussian by hand; responses outside the support are dropped
  and counted;
- killed with SIGKILL after a chunk and restarted, its output equals an uninterrupted run's byte for byte;
- under torchrun, two data-parallel replicas give the single process's bytes, and TP=2 its samples with
  log-probs within 1e-4.
"""

import dataclasses
import json
import math
import sys

import pytest
import torch

from tests.helpers import ROOT, re_rooted, run_in_session, seed_command

BUILD = ROOT / "examples" / "nlp" / "gpt" / "build_steerlm2_dataset.py"
NAMES = ["quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence",
         "complexity", "verbosity"]  # the reward model's output order, written out as the seed lists them


@pytest.fixture(scope="module")
def models(tmp_path_factory, megatron_single):
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reward import build_reward_model
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece
    from tests.helpers import tiny_llama

    d = tmp_path_factory.mktemp("s2build")
    chats = []
    for k in range(6):
        chats.append({"system": "Be nice.", "mask": "User", "type": "VALUE_TO_TEXT", "conversations": [
            {"from": "User", "value": f"what is {k} plus {k}?", "label": None},
            {"from": "Assistant", "value": f"{k} plus {k} is {2 * k}.",
             "label": f"quality:{k % 5},helpfulness:4"}]})
    (d / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    texts = [c["system"] + " ".join(t["value"] for t in c["conversations"]) for c in chats]
    texts += ["System", "User", "Assistant", "quality:4,helpfulness:4 plus is what"]
    tok = load_tokenizer("sentencepiece", str(train_sentencepiece(texts, d / "spm", vocab_size=300)))
    tok.save(str(d / "tokdir"))
    cfg = tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=128, encoder_seq_length=128,
                     make_vocab_size_divisible_by=64)
    torch.manual_seed(1)
    save_checkpoint(d / "policy", build_gpt_model(cfg), cfg, tokenizer_dir=d / "tokdir")
    torch.manual_seed(2)
    save_checkpoint(d / "sft", build_gpt_model(cfg), cfg, tokenizer_dir=d / "tokdir")
    rm_cfg = dataclasses.replace(cfg, num_attributes=9)
    save_checkpoint(d / "rm", build_reward_model(rm_cfg), rm_cfg, tokenizer_dir=d / "tokdir")
    return d


def _args(d, out):
    return [f"input={d / 'chats.jsonl'}", f"output={out}", f"policy_checkpoint={d / 'policy'}",
            f"sft_checkpoint={d / 'sft'}", f"rm_checkpoint={d / 'rm'}", "num_responses=3", "chunk_size=2",
            "sample.tokens_to_generate=12", "sample.temperature=0.9", "likelihood_sigma=0.7"]


def _full_logps(ckpt, prompt, response, tokenizer):
    """sum over the response's tokens of log softmax(logits / T) from the full (gathered) logits, float64."""
    from megatron_align.data.tokenize import Rendered, encode_rendered
    from tests.e2e.test_hf_parity import megatron_logits

    text = Rendered(prompt + response, ((len(prompt), len(prompt) + len(response)),))
    enc = encode_rendered(text, tokenizer)
    logits = megatron_logits(ckpt, torch.tensor([enc.ids]))[0].double()  # [S, Vp]
    return logits, enc


PROCESSORS = ["sample.top_k=280", "sample.top_p=0.995", "sample.repetition_penalty=1.3",
              "sample.min_tokens_to_generate=2"]


def test_builder_log_probs_equal_independent_recomputation(models):
    """With every processor on (a random policy's near-uniform rows make some re-tokenized tokens fall outside
    top-k / top-p: those responses are dropped and counted, and the reference says -inf for exactly them)."""
    from megatron_align.config.data import ChatPromptTokens
    from megatron_align.config.sampling import SamplingParams
    from megatron_align.data.nemo_chat import Turn
    from megatron_align.data.reward import RMDataset
    from megatron_align.data.steerlm.records import SYSTEM_PROMPT
    from megatron_align.data.steerlm.regression import regression_text
    from megatron_align.data.steerlm2 import SteerLM2File, SteerLM2Rules, response_text, steerlm2_prompt
    from megatron_align.scoring.reward_model import RewardScorer
    from megatron_align.tokenizers import load_tokenizer_from_dir
    from tests.sampling_reference import processed_logprob

    d = models
    out = d / "built.jsonl"
    proc = run_in_session([sys.executable, str(BUILD), *_args(d, out), *PROCESSORS])
    assert proc.returncode == 0, proc.stderr[-5000:]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    kept = sum(len(r["responses"]) for r in recs)
    assert f"{kept} responses ({18 - kept} outside" in proc.stdout, proc.stdout
    assert 0 < kept < 18 and all(1 <= len(r["responses"]) <= 3 for r in recs)
    assert set(recs[0]) == {"system", "prompt_turns", "label", "responses", "provenance"}
    assert all(r["provenance"]["logq"] == "sampling" for r in recs)
    assert recs[0]["provenance"]["logq_processors"] == ["temperature", "top_k", "top_p", "repetition_penalty",
                                                        "min_tokens_to_generate"]
    items = RMDataset([SteerLM2File(out, load_tokenizer_from_dir(d / "tokdir"), SteerLM2Rules(128))])
    assert len(items) == len(recs)

    tok = load_tokenizer_from_dir(d / "tokdir")
    t = ChatPromptTokens()
    params = SamplingParams(temperature=0.9, top_k=280, top_p=0.995, repetition_penalty=1.3,
                            min_tokens_to_generate=2)
    chats = [json.loads(x) for x in (d / "chats.jsonl").read_text().splitlines()]
    work = d / "built.jsonl.work"
    samples = json.loads((work / "samples" / "000000.json").read_text())
    logq = json.loads((work / "logq" / "000000.json").read_text())
    for i, (value, got) in enumerate(zip(samples, logq, strict=True)):  # chunk 0: every response, kept or not
        chat = chats[i // 3]
        turns = [("User", chat["conversations"][0]["value"])]
        labelled = steerlm2_prompt(chat["system"], turns, "Assistant", chat["conversations"][1]["label"], t)
        logits, enc = _full_logps(d / "policy", labelled, response_text(value, t), tok)
        ids = enc.ids.tolist()
        span = [j for j in range(1, len(ids)) if enc.target_mask[j]]
        want = sum(processed_logprob(logits[j - 1].tolist(), ids[j], ids[:j], j - span[0], params,
                                     tok.eos_id, tok.vocab_size) for j in span)
        assert (got == want == -math.inf) or got == pytest.approx(want, abs=1e-5), i
        kept_here = [r for r in recs if r["provenance"]["chunk"] == 0 and r["prompt_turns"][0]["value"] ==
                     turns[0][1]]
        assert any(r["value"] == value for k in kept_here for r in k["responses"]) == math.isfinite(want)

    scorer = RewardScorer(d / "rm", "32")
    for rec in recs[:2]:
        turns = [(x["from"], x["value"]) for x in rec["prompt_turns"]]
        plain = steerlm2_prompt(rec["system"], turns, "Assistant", None, t)
        for resp in rec["responses"]:
            answer = response_text(resp["value"], t)
            logits, enc = _full_logps(d / "sft", plain, answer, tok)
            logp = torch.log_softmax(logits, -1)
            want = sum(float(logp[j - 1, enc.ids[j]]) for j in range(1, len(enc.ids)) if enc.target_mask[j])
            assert resp["log(P(y|x))"] == pytest.approx(want, abs=1e-5)
            chat = [Turn(r, v) for r, v in turns] + [Turn("Assistant", resp["value"])]
            text = regression_text(SYSTEM_PROMPT, chat, len(turns), t)
            pred = scorer.score([text])[0]
            want = 0.0
            for name, value in (x.split(":") for x in rec["label"].split(",")):
                r = pred[NAMES.index(name)]
                scale = range(-3, 5) if name == "quality" else range(0, 5)
                z = sum(math.exp(-((v - r) ** 2) / (2 * 0.49)) for v in scale)
                want += -((int(value) - r) ** 2) / (2 * 0.49) - math.log(z)
            assert resp["log(P(a|x,y))"] == pytest.approx(want, abs=1e-5)


def test_sigkill_then_restart_gives_the_same_bytes(models):
    d = models
    ref = d / "ref.jsonl"
    assert run_in_session([sys.executable, str(BUILD), *_args(d, ref)]).returncode == 0
    out = d / "killed.jsonl"
    for hook in ("samples:1", "logpy:0"):
        killed = run_in_session([sys.executable, str(BUILD), *_args(d, out)],
                                {"MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK": hook})
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert not out.exists()
    resumed = run_in_session([sys.executable, str(BUILD), *_args(d, out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.read_bytes() == ref.read_bytes()
    other = run_in_session([sys.executable, str(BUILD), *_args(d, out), "num_responses=2"])
    assert other.returncode == 2 and "holds the work of another config" in other.stderr


@pytest.mark.distributed
def test_data_and_tensor_parallel_builds_follow_the_single_process(models):
    """torchrun, 2 ranks: two data-parallel replicas write the single process's bytes; TP=2 (one replica)
    draws the same responses, its log-probs within 1e-4 (float sums in another order)."""
    from tests.helpers import run_ranks

    d = models
    ref = d / "ref.jsonl"
    if not ref.exists():
        assert run_in_session([sys.executable, str(BUILD), *_args(d, ref)]).returncode == 0
    dp = d / "dp2.jsonl"
    proc = run_ranks(BUILD, _args(d, dp))
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert dp.read_bytes() == ref.read_bytes()
    tp = d / "tp2.jsonl"
    proc = run_ranks(BUILD, [*_args(d, tp), "tensor_model_parallel_size=2"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    for a, b in zip(ref.read_text().splitlines(), tp.read_text().splitlines(), strict=True):
        a, b = json.loads(a), json.loads(b)
        assert [r["value"] for r in a["responses"]] == [r["value"] for r in b["responses"]]
        for ra, rb in zip(a["responses"], b["responses"]):
            for key in ("log(P(a|x,y))", "log(P(y|x))", "log(Q(y|a,x))"):
                assert rb[key] == pytest.approx(ra[key], abs=1e-4), key


SEED_SIZES = {"trainer.num_nodes": "1", "trainer.devices": "1", "model.tensor_model_parallel_size": "1",
              "model.pipeline_model_parallel_size": "1", "trainer.sft.max_steps": "2",
              "trainer.sft.val_check_interval": "2", "trainer.sft.save_interval": "2",
              "trainer.sft.limit_val_batches": "1", "model.data.train_ds.global_batch_size": "4",
              "model.data.validation_ds.global_batch_size": "4", "model.data.train_ds.max_seq_length": "128",
              "model.data.validation_ds.max_seq_length": "128"}


def test_seed_training_command_runs_on_built_records(models):
    """Seed 000's train_steerlm2.py command, as written (tests/data/seed_steerlm2_command.txt), with only
    paths and sizes changed, on the builder's records."""
    d = models
    built = d / "seed_data.jsonl"
    assert run_in_session([sys.executable, str(BUILD), *_args(d, built)]).returncode == 0
    words = seed_command("seed_steerlm2_command.txt")[0]
    assert words[:2] == ["python", "examples/nlp/gpt/train_steerlm2.py"]
    argv = re_rooted(words, {**SEED_SIZES, "model.restore_from_path": d / "policy",
                             "exp_manager.explicit_log_dir": d / "results" / "acsft_70b"},
                     {".file_path": built, "index_mapping_dir": d / "index"})
    assert len(argv) == 47  # every key of the seed's command is kept
    proc = run_in_session([sys.executable, str(ROOT / words[1]), *argv])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = [json.loads(x) for x in (d / "results" / "acsft_70b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "val_distance" in rows[-1]  # max_epochs=1: 6 records / 4
    assert all(math.isfinite(r["loss"]) and r["responses_per_prompt"] == 3 for r in rows)


def test_two_rounds_then_rerun_skips_and_resumes(models):
    """rounds=2: round 2 samples from round 1's checkpoint; rerunning skips done rounds; a round without its
    done marker is resumed (its data and checkpoints are reused) and gives the same checkpoint path."""
    d = models
    rounds = ROOT / "examples" / "nlp" / "gpt" / "steerlm2_rounds.py"
    out = d / "rounds"
    build = [f"build.{a}" for a in _args(d, d / "unused.jsonl") if not a.startswith("output=")]
    train = ["train.trainer.precision=32", "train.trainer.sft.max_steps=2", "train.trainer.sft.max_epochs=5",
             "train.model.data.train_ds.global_batch_size=2", "train.model.data.train_ds.micro_batch_size=2",
             "train.model.data.train_ds.max_seq_length=128", "train.model.steerlm2.micro_batch_size=3",
             "train.model.steerlm2.forward_micro_batch_size=3",
             "train.exp_manager.create_tensorboard_logger=False"]
    args = [str(rounds), "rounds=2", f"output_dir={out}", *build, *train]
    first = run_in_session([sys.executable, *args])
    assert first.returncode == 0, first.stderr[-5000:]
    r1 = json.loads((out / "round_1" / "train" / "done.json").read_text())["checkpoint"]
    r2 = json.loads((out / "round_2" / "train" / "done.json").read_text())["checkpoint"]
    data2 = [json.loads(x) for x in (out / "round_2" / "data.jsonl").read_text().splitlines()]
    prov = data2[0]["provenance"]
    assert prov["policy"] == r1 and prov["sampling"]["random_seed"] == 2234  # 1234 + 1000 * (2 - 1)
    again = run_in_session([sys.executable, *args])
    assert again.returncode == 0 and again.stdout.count("skipped (done)") == 2, again.stdout
    (out / "round_2" / "train" / "done.json").unlink()
    resumed = run_in_session([sys.executable, *args])
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "round 1: skipped (done)" in resumed.stdout and f"round 2: checkpoint {r2}" in resumed.stdout
