"""Preference training end to end through ``examples/nlp/gpt/train_gpt_dpo.py``, single rank.

- dpo on NeMo-Aligner's ``dummy-dpo.jsonl``: the step-0 loss is ln 2 exactly (fp32), margin and accuracy
  grow on held-out pairs, and every metric of the stage is in metrics.jsonl;
- step 0 is ln 2 exactly at micro-batch 1 and 4 too, also with over-length pairs kept untrained;
- exo-rw on K = 4 completions per prompt (two groups of 2) in the EXO repository's JSON-array format learns;
- precomputed reference log-probs give the on-the-fly losses and are read back, not recomputed, on resume;
- a run killed right after a checkpoint and resumed reproduces the uninterrupted losses.
"""

import json
import math
import sys

import numpy as np
import pytest

from megatron_align.tokenizers import train_sentencepiece
from tests.helpers import ROOT, run_in_session

DPO = ROOT / "examples" / "nlp" / "gpt" / "train_gpt_dpo.py"
FIXTURE = ROOT / "tests" / "data" / "dummy-dpo.jsonl"
LN2_FP32 = float(np.float32(math.log(2)))
PAIR_KEYS = ("loss", "preference_loss", "sft_loss", "rewards_chosen_mean", "rewards_rejected_mean", "margin",
             "accuracy", "kl_chosen", "ignored_pairs")


def _run(args, env_extra=None, timeout=600):
    return run_in_session([sys.executable, str(DPO), *args], env_extra, timeout)


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _records():
    return [json.loads(x) for x in FIXTURE.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def base(tmp_path_factory, megatron_single):
    """A tiny random Llama-style policy with a sentencepiece tokenizer of the fixture's texts."""
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.tokenizers import load_tokenizer
    from tests.helpers import tiny_llama

    d = tmp_path_factory.mktemp("dpo_base")
    texts = [r["prompt"] + r["chosen_response"] + r["rejected_response"] for r in _records()]
    tok = load_tokenizer("sentencepiece", str(train_sentencepiece(texts, d / "spm", vocab_size=300)))
    tok.save(str(d / "tokdir"))
    cfg = tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=256, encoder_seq_length=256,
                     make_vocab_size_divisible_by=64)
    save_checkpoint(d / "base", build_gpt_model(cfg), cfg, tokenizer_dir=d / "tokdir")
    recs = _records()
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:80]))
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[80:]))
    return d


def _common(d, steps=3, extra=()):
    return ["exp_manager.create_tensorboard_logger=False", "trainer.precision=32",
            f"pretrained_checkpoint.restore_from_path={d / 'base'}", "model.data.seq_length=128",
            f"model.data.data_prefix={{train: [{d / 'train.jsonl'}], validation: [{d / 'val.jsonl'}], "
            f"test: [{d / 'val.jsonl'}]}}", "model.global_batch_size=4", "model.micro_batch_size=2",
            f"trainer.dpo.max_steps={steps}", f"trainer.dpo.val_check_interval={steps}",
            f"trainer.dpo.save_interval={steps}", "trainer.dpo.limit_val_batches=4", "model.optim.lr=1e-3",
            "model.optim.sched.warmup_steps=0", *extra]


def test_dpo_learns_nemo_fixture(base):
    run = base / "learn"
    proc = _run([*_common(base, steps=12, extra=["trainer.dpo.val_check_interval=6"]),
                 f"exp_manager.explicit_log_dir={run}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _metrics(run)
    assert rows[0]["loss"] == LN2_FP32 and rows[0]["accuracy"] == 0 and rows[0]["margin"] == 0
    for key in PAIR_KEYS:
        assert all(key in r for r in rows), key
    assert "entropy_pf" not in rows[0]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [6, 12]
    for key in PAIR_KEYS[1:]:
        assert f"val_{key}" in val[0], key
    assert val[-1]["val_margin"] > 0.5 and val[-1]["val_accuracy"] >= 0.9, val
    assert val[-1]["val_loss"] < 0.5 * LN2_FP32
    assert rows[-1]["margin"] > rows[1]["margin"] > 0
    assert "dpo: 12 steps" in proc.stdout


@pytest.mark.parametrize("mbs", [1, 4])
def test_step0_loss_is_ln2_at_micro_batch_1_and_4(base, mbs):
    """Policy and reference score the same micro-batches: delta is exactly 0 at step 0. With seq_length=48
    some pairs are over-length and kept untrained (ignored): still ln 2, finite, counted."""
    run = base / f"step0_mbs{mbs}"
    proc = _run([*_common(base, steps=1, extra=[f"model.micro_batch_size={mbs}", "model.data.seq_length=48",
                                                "trainer.dpo.limit_val_batches=1"]),
                 f"exp_manager.explicit_log_dir={run}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    (row,) = _metrics(run)
    assert row["loss"] == LN2_FP32 and row["val_loss"] == LN2_FP32, row
    assert row["kl_chosen"] == 0 and row["rewards_chosen_mean"] == 0
    assert "over_length_ignored" in proc.stderr


def _exo_data(d):
    """EXO's {prompt, completions, rewards} (JSON arrays): 4 completions per prompt, two groups of two."""
    recs = _records()
    out = []
    for i in range(0, len(recs) - 1, 2):
        a, b = recs[i], recs[i + 1]
        out.append({"prompt": a["prompt"], "completions": [a["chosen_response"], a["rejected_response"],
                                                           b["chosen_response"], b["rejected_response"]],
                    "rewards": [2.0, -1.0, 1.0, 0.0]})
    (d / "exo").mkdir(exist_ok=True)
    (d / "exo" / "train.json").write_text(json.dumps(out[:40], indent=4))
    (d / "exo" / "test.json").write_text(json.dumps(out[40:], indent=4))
    return d / "exo"


def test_exo_rw_learns_k4_json_arrays(base):
    data = _exo_data(base)
    run = base / "exo_rw"
    proc = _run([*_common(base, steps=10, extra=[
        f"model.data.data_prefix={{train: [{data / 'train.json'}], validation: [{data / 'test.json'}], "
        f"test: [{data / 'test.json'}]}}", "model.dpo.preference_loss=exo-rw", "model.dpo.num_contrastive=2",
        "model.dpo.beta_r=0.5", "model.dpo.beta_pi=0.5", "model.dpo.temp=0.8",
        "trainer.dpo.val_check_interval=5", "model.global_batch_size=2", "model.micro_batch_size=1"]),
        f"exp_manager.explicit_log_dir={run}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _metrics(run)
    assert all("entropy_pf" in r and "kl_pf_pr" in r for r in rows)
    # step 0: p_f uniform over each pair -> loss = KL(uniform || softmax(R / beta_r)), entropy ln 2
    assert rows[0]["entropy_pf"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["loss"] > 0 and rows[0]["kl_pf_pr"] == pytest.approx(rows[0]["loss"], rel=1e-6)
    step0 = (_kl_uniform([2.0, -1.0], 0.5) + _kl_uniform([1.0, 0.0], 0.5)) / 2  # the same for every prompt
    assert rows[0]["loss"] == pytest.approx(step0, rel=1e-5)
    val = [r for r in rows if "val_loss" in r]  # held-out prompts: p_f moved towards p_R
    assert val[-1]["val_loss"] < 0.1 * step0 and val[-1]["val_margin"] > 0, val


def _kl_uniform(rewards, beta_r):
    z = np.exp(np.asarray(rewards) / beta_r)
    q = z / z.sum()
    p = np.full(len(rewards), 1 / len(rewards))
    return float((p * (np.log(p) - np.log(q))).sum())


def test_precomputed_reference_equals_on_the_fly_and_is_reused(base):
    online, pre = base / "ref_online", base / "ref_pre"
    args = _common(base, steps=3, extra=["model.dpo.log_prob_forward_micro_batch_size=3"])
    a = _run([*args, f"exp_manager.explicit_log_dir={online}"])
    b = _run([*args, "model.dpo.precompute_ref_logprobs=True", f"exp_manager.explicit_log_dir={pre}"])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-3000:], b.stderr[-3000:])
    assert "precomputing reference log-probs of 80 items" in b.stderr
    (cache,) = (pre / "ref_logprobs").glob("*.npz")
    with np.load(cache) as z:
        assert z["offsets"].shape == (81,) and z["values"].shape == (160,) and np.all(z["values"] < 0)
    for x, y in zip(_metrics(online), _metrics(pre)):
        for key in ("loss", "margin", "val_loss"):
            if key in x:
                assert abs(x[key] - y[key]) <= 1e-5 * max(1.0, abs(x[key])), (key, x, y)
    more = _run([*_common(base, steps=4, extra=["model.dpo.log_prob_forward_micro_batch_size=3"]),
                 "model.dpo.precompute_ref_logprobs=True", f"exp_manager.explicit_log_dir={pre}"])
    assert more.returncode == 0, more.stderr[-3000:]
    assert "reference log-probs read from" in more.stderr and "precomputing" not in more.stderr
    assert [r["step"] for r in _metrics(pre)] == [1, 2, 3, 4]


def test_resume_after_sigkill_reproduces_the_run(base):
    extra = ["trainer.dpo.save_interval=2", "model.hidden_dropout=0.1", "trainer.dpo.val_check_interval=100",
             "model.dpo.sft_loss_weight=0.1"]
    common = _common(base, steps=4, extra=extra)
    ref = _run([*common, f"exp_manager.explicit_log_dir={base / 'resume_ref'}"])
    assert ref.returncode == 0, ref.stderr[-5000:]
    killed = _run([*common, f"exp_manager.explicit_log_dir={base / 'resume_run'}"],
                  env_extra={"MEGATRON_ALIGN_TEST_KILL_AFTER_STEP": "2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _run([*common, f"exp_manager.explicit_log_dir={base / 'resume_run'}"])
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed from" in resumed.stderr
    a = {r["step"]: r for r in _metrics(base / "resume_ref")}
    b = {r["step"]: r for r in _metrics(base / "resume_run")}
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "margin", "sft_loss"):
            assert abs(a[step][key] - b[step][key]) <= 1e-6, (step, key, a[step], b[step])
        assert a[step]["consumed_samples"] == b[step]["consumed_samples"] == 4 * step


# ------------------------------------------------------------------------------------------------------------
# parallel layouts
# ------------------------------------------------------------------------------------------------------------
LAYOUT_LOSSES = {
    "dpo": [],
    "exo-rw": ["model.dpo.preference_loss=exo-rw", "model.dpo.num_contrastive=2", "model.dpo.beta_r=0.5",
               "model.dpo.temp=0.8", "model.global_batch_size=2", "model.micro_batch_size=1"],
}


@pytest.fixture(scope="module")
def layout_refs(base):
    """The single-rank 3-step trajectory of each loss (the reference of the layouts)."""
    data = _exo_data(base)
    refs = {}
    for loss, extra in LAYOUT_LOSSES.items():
        if loss != "dpo":
            extra = [*extra, f"model.data.data_prefix={{train: [{data / 'train.json'}], validation: "
                             f"[{data / 'test.json'}], test: [{data / 'test.json'}]}}"]
        args = _common(base, steps=3, extra=["trainer.dpo.limit_val_batches=1", *extra])
        run = base / f"layout_ref_{loss}"
        proc = _run([*args, f"exp_manager.explicit_log_dir={run}"])
        assert proc.returncode == 0, proc.stderr[-5000:]
        refs[loss] = (args, _metrics(run))
    return refs


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
@pytest.mark.parametrize("loss", sorted(LAYOUT_LOSSES))
def test_layouts_follow_the_single_rank_run(base, layout_refs, loss, layout):
    """TP=2 and PP=2 (2 ranks each) follow the TP=1 trajectory within 2e-5 for 3 steps, and the dpo step-0
    loss is ln 2 exactly there too - at micro-batch 4 (TP=2) and 1 (PP=2, four micro-batches in flight): the
    loss is one mean over the global batch, whatever its split."""
    from tests.helpers import run_ranks

    args, ref = layout_refs[loss]
    key = "tensor" if layout == "tp2" else "pipeline"
    split = [f"model.micro_batch_size={4 if layout == 'tp2' else 1}"] if loss == "dpo" else []
    run = base / f"layout_{loss}_{layout}"
    proc = run_ranks(DPO, [*args, "trainer.devices=2", f"model.{key}_model_parallel_size=2", *split,
                           f"exp_manager.explicit_log_dir={run}"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    got = _metrics(run)
    assert [r["step"] for r in got] == [1, 2, 3]
    if loss == "dpo":
        assert got[0]["loss"] == LN2_FP32
    for a, b in zip(ref, got):
        for k in ("loss", "margin", "accuracy", "val_loss", "kl_pf_pr"):
            if k in a:
                assert abs(a[k] - b[k]) <= 2e-5 * max(1.0, abs(a[k])), (loss, layout, k, a, b)
