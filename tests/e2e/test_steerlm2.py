"""SteerLM 2.0 training end to end through ``examples/nlp/gpt/train_steerlm2.py``, on records whose
log Q'(y|a,x) is the starting model's own sequence log-prob (as when the responses were sampled from it at
temperature 1) and whose log P(a|x,y) picks one response of three:

- step 0: log Q_theta = log Q' (``logq_drift`` ~ 0), so b' is uniform and distance = KL(w' || uniform);
- the policy moves toward w': the distance KL(w' || b') falls, on training and on held-out prompts;
- TP=2 and PP=2 follow the single-rank loss and distance for 3 steps.
"""

import json
import math
import random
import sys

import pytest

from tests.helpers import ROOT, run_in_session

S2 = ROOT / "examples" / "nlp" / "gpt" / "train_steerlm2.py"
GOOD = ["clear helpful answer", "kind precise reply", "correct detailed note"]
BAD = ["rude wrong words", "vague lazy thing", "false sloppy stuff", "harsh useless text"]


def _run(args, timeout=600):
    return run_in_session([sys.executable, str(S2), *args], None, timeout)


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, megatron_single):
    """A tiny random policy and 32 records (3 responses each), log Q' scored by that policy in process."""
    from megatron_align.config.data import ChatPromptTokens
    from megatron_align.data.steerlm2 import render_prompt
    from megatron_align.data.tokenize import Rendered, encode_rendered
    from megatron_align.generation.build import load_model
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.scoring.forward import token_logprobs_of
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece
    from tests.helpers import tiny_llama

    d = tmp_path_factory.mktemp("steerlm2")
    rng = random.Random(0)
    recs = []
    for k in range(32):
        values = [rng.choice(GOOD), *rng.sample(BAD, 2)]
        recs.append({"system": "Be nice.", "prompt_turns": [{"from": "User", "value": f"question {k}?"}],
                     "label": "quality:4", "responses": [{"from": "Assistant", "value": v} for v in values]})
    texts = [r["system"] + r["prompt_turns"][0]["value"] + " ".join(x["value"] for x in r["responses"])
             for r in recs] + ["System", "User", "Assistant", "quality:4"]
    tok = load_tokenizer("sentencepiece", str(train_sentencepiece(texts, d / "spm", vocab_size=400)))
    tok.save(str(d / "tokdir"))
    cfg = tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=128, encoder_seq_length=128,
                     make_vocab_size_divisible_by=64)
    save_checkpoint(d / "base", build_gpt_model(cfg), cfg, tokenizer_dir=d / "tokdir")
    model, tokenizer, model_cfg = load_model(d / "base", "gpt", "32")
    t = ChatPromptTokens()
    for r in recs:
        prompt, _, _ = render_prompt(r, t)
        seqs, masks = [], []
        for resp in r["responses"]:
            answer = f"{resp['value']}{t.end_of_turn}{t.turn_start}"
            text = Rendered(prompt + answer, ((len(prompt), len(prompt) + len(answer)),))
            enc = encode_rendered(text, tokenizer)
            seqs.append(enc.ids.tolist())
            masks.append(enc.target_mask[1:])
        rows, _ = token_logprobs_of(model, seqs, tokenizer.pad_id, model_cfg.vocab_size)
        for i, (resp, row, mask) in enumerate(zip(r["responses"], rows, masks)):
            resp["log(Q(y|a,x))"] = sum(lp for lp, m in zip(row, mask) if m)
            resp["log(P(y|x))"] = str(resp["log(Q(y|a,x))"])  # a numeric string, as the seed writes values
            resp["log(P(a|x,y))"] = 0.0 if i == 0 else -6.0  # the attribute model wants the first
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:24]))
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[24:]))
    args = ["trainer.precision=32", "exp_manager.create_tensorboard_logger=False",
            f"model.restore_from_path={d / 'base'}", f"model.data.train_ds.file_path={d / 'train.jsonl'}",
            f"model.data.validation_ds.file_path={d / 'val.jsonl'}",
            "model.data.train_ds.global_batch_size=4", "model.data.train_ds.micro_batch_size=2",
            "model.data.validation_ds.global_batch_size=4", "model.data.validation_ds.micro_batch_size=2",
            "model.data.train_ds.max_seq_length=64", "model.data.validation_ds.max_seq_length=64",
            "model.steerlm2.micro_batch_size=4", "model.steerlm2.forward_micro_batch_size=3",
            "trainer.sft.limit_val_batches=2", "model.optim.lr=2e-3", "model.optim.sched.warmup_steps=0",
            "trainer.sft.max_epochs=10"]
    return d, args


def test_steerlm2_moves_the_policy_toward_the_target_weights(setup):
    d, args = setup
    run = d / "learn"
    proc = _run([*args, "trainer.sft.max_steps=12", "trainer.sft.val_check_interval=6",
                 "trainer.sft.save_interval=12", f"exp_manager.explicit_log_dir={run}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _metrics(run)
    w = [1 / (1 + 2 * math.exp(-6.0)), math.exp(-6.0) / (1 + 2 * math.exp(-6.0))]
    kl_uniform = w[0] * math.log(3 * w[0]) + 2 * w[1] * math.log(3 * w[1])  # KL(w' || uniform)
    first = rows[0]
    assert abs(first["logq_drift"]) < 1e-4 and first["responses_per_prompt"] == 3
    assert first["distance"] == pytest.approx(kl_uniform, rel=1e-4)
    assert first["ess_w"] == pytest.approx(1 / (w[0] ** 2 + 2 * w[1] ** 2), rel=1e-5)
    assert rows[-1]["distance"] < 0.5 * first["distance"], [r["distance"] for r in rows]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [6, 12] and val[-1]["val_distance"] < 0.7 * kl_uniform, val
    assert "steerlm2: 12 steps" in proc.stdout


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["tensor", "pipeline"])
def test_tp2_and_pp2_follow_the_single_rank_run(setup, layout):
    from tests.helpers import run_ranks

    d, args = setup
    common = [*args, "trainer.sft.max_steps=3", "trainer.sft.val_check_interval=3",
              "trainer.sft.save_interval=3", "model.data.train_ds.shuffle=False"]
    ref = d / f"ref_{layout}"
    proc = _run([*common, f"exp_manager.explicit_log_dir={ref}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    run = d / f"{layout}2"
    proc = run_ranks(S2, [*common, "trainer.devices=2", f"model.{layout}_model_parallel_size=2",
                          f"exp_manager.explicit_log_dir={run}"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    for a, b in zip(_metrics(ref), _metrics(run)):
        for key in ("loss", "distance", "val_loss", "val_distance"):
            if key in a:
                assert abs(a[key] - b[key]) <= 2e-5 * max(1.0, abs(a[key])), (layout, key, a, b)
