"""SFT end to end through ``examples/nlp/gpt/train_gpt_sft.py``: it learns on NeMo-Aligner's fixture, resumes
after a SIGKILL exactly, and follows the same loss trajectory at TP=2 and PP=2 as at TP=1."""

import json
import shutil
import sys

import pytest

from megatron_align.tokenizers import train_sentencepiece
from tests.helpers import ROOT, re_rooted, run_in_session, run_ranks, seed_command

SFT = ROOT / "examples" / "nlp" / "gpt" / "train_gpt_sft.py"
FIXTURE = ROOT / "tests" / "data" / "dummy-sft.jsonl"

TINY = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
        "model.num_attention_heads=4", "model.num_query_groups=2", "model.max_position_embeddings=256",
        "model.encoder_seq_length=256", "model.make_vocab_size_divisible_by=64", "trainer.precision=32",
        "model.optim.name=distributed_fused_adam",
        "model.optim.lr=3e-3", "model.optim.sched.warmup_steps=2", "model.optim.sched.min_lr=3e-4",
        "model.data.train_ds.max_seq_length=256", "model.data.validation_ds.max_seq_length=256",
        "model.data.train_ds.micro_batch_size=2", "model.data.train_ds.global_batch_size=4",
        "model.data.validation_ds.micro_batch_size=2", "model.data.validation_ds.global_batch_size=4",
        "exp_manager.create_tensorboard_logger=False", "trainer.sft.max_epochs=1000"]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """The fixture JSONL plus a sentencepiece tokenizer trained on its text."""
    d = tmp_path_factory.mktemp("sft_data")
    shutil.copy(FIXTURE, d / "train.jsonl")
    texts = []
    for line in FIXTURE.read_text().splitlines():
        rec = json.loads(line)
        texts.append(rec.get("system", ""))
        texts += [t["value"] for t in rec["conversations"]]
    texts += ["System", "User", "Assistant"]
    tok = train_sentencepiece(texts, d / "tok", vocab_size=1000)
    return {"dir": d, "train": d / "train.jsonl", "tokenizer": tok}


def _args(data, run_dir, *extra):
    return [*TINY, "model.data.chat=True", f"model.data.train_ds.file_path={data['train']}",
            f"model.data.validation_ds.file_path={data['train']}", "model.tokenizer.library=sentencepiece",
            f"model.tokenizer.model={data['tokenizer']}", f"exp_manager.explicit_log_dir={run_dir}", *extra]


def _run(args, env_extra=None, timeout=900):
    return run_in_session([sys.executable, str(SFT), *args], env_extra, timeout)


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_sft_on_fixture_loss_falls(sft_data, tmp_path):
    run = tmp_path / "run"
    proc = _run(_args(sft_data, run, "trainer.sft.max_steps=60", "trainer.sft.val_check_interval=30",
                      "trainer.sft.save_interval=60", "trainer.sft.limit_val_batches=2",
                      "model.optim.sched.name=Constant", "model.optim.lr=5e-3"))
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 61))
    first = sum(r["loss"] for r in rows[:3]) / 3
    last = sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 1.0, (first, last)  # a 64-wide model on 29 real chats: ~6.9 -> ~5.2 nats
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0]
    assert all(r["skipped"] == 0 for r in rows)
    assert (run / "checkpoints" / "step=60" / "metadata.json").is_file()
    assert "sft: 60 steps" in proc.stdout


def test_resume_after_sigkill_reproduces_uninterrupted_losses(sft_data, tmp_path):
    common = ["trainer.sft.max_steps=6", "trainer.sft.save_interval=2", "trainer.sft.val_check_interval=100",
              "model.hidden_dropout=0.1"]  # dropout on: the resumed RNG state matters too
    ref = tmp_path / "uninterrupted"
    proc = _run(_args(sft_data, ref, *common))
    assert proc.returncode == 0, proc.stderr[-5000:]
    run = tmp_path / "killed"
    killed = _run(_args(sft_data, run, *common), env_extra={"MEGATRON_ALIGN_TEST_KILL_AFTER_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (run / "checkpoints" / "step=4" / "metadata.json").is_file()
    resumed = _run(_args(sft_data, run, *common))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed from" in resumed.stderr
    a = {r["step"]: r["loss"] for r in _metrics(ref)}
    b = {r["step"]: r["loss"] for r in _metrics(run)}
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


@pytest.mark.distributed
def test_tp2_and_pp2_follow_the_tp1_loss_trajectory(sft_data, tmp_path, megatron_single):
    """Same starting checkpoint at every layout (TP=2, TP=2 with sequence parallelism, PP=2), dropout off: 3
    steps of losses agree."""
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.tokenizers import load_tokenizer
    from tests.helpers import tiny_llama

    tok = load_tokenizer("sentencepiece", str(sft_data["tokenizer"]))
    cfg = tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=256, encoder_seq_length=256,
                     make_vocab_size_divisible_by=64)
    base = tmp_path / "base"
    tok.save(tmp_path / "tokdir")
    save_checkpoint(base, build_gpt_model(cfg), cfg, tokenizer_dir=tmp_path / "tokdir")
    common = ["trainer.sft.max_steps=3", "trainer.sft.save_interval=100",
              "trainer.sft.val_check_interval=100", f"model.restore_from_path={base}"]
    ref = _run(_args(sft_data, tmp_path / "tp1", *common))
    assert ref.returncode == 0, ref.stderr[-5000:]
    expected = [r["loss"] for r in _metrics(tmp_path / "tp1")]
    layouts = {"tp2": ["model.tensor_model_parallel_size=2"],
               "tp2_sp": ["model.tensor_model_parallel_size=2", "model.sequence_parallel=True"],
               "pp2": ["model.pipeline_model_parallel_size=2"]}
    for layout, overrides in layouts.items():
        run = tmp_path / layout
        proc = run_ranks(SFT, _args(sft_data, run, *common, "trainer.devices=2", *overrides))
        assert proc.returncode == 0, proc.stdout[-5000:]
        got = [r["loss"] for r in _metrics(run)]
        assert len(got) == 3
        for a, b in zip(expected, got):
            assert abs(a - b) <= 2e-5 * max(1.0, abs(a)), (layout, expected, got)


def test_bad_data_one_line_error_or_skipped_and_counted(sft_data, tmp_path):
    lines = FIXTURE.read_text().splitlines()[:6]
    bad = tmp_path / "bad.jsonl"
    broken = ['{"system": "", "mask": "User", "conversations": [{"from": "Bot", "value": "hi"}]}',
              "{not json"]
    bad.write_text("\n".join(lines[:2] + broken + lines[2:]) + "\n")
    args = [f"model.data.train_ds.file_path={bad}", "model.data.validation_ds.file_path=null",
            "trainer.sft.max_steps=3", "trainer.sft.save_interval=100", "trainer.sft.val_check_interval=100"]
    err = _run(_args(sft_data, tmp_path / "err", *args))
    assert err.returncode == 2, err.stderr[-3000:]
    last = err.stderr.strip().splitlines()[-1]
    # every line is checked before step 1: the first bad line in the file, with the count of bad lines
    assert last.startswith(f"data error: {bad}:3: conversations[0].from: unknown role 'Bot'"), last
    assert "the first of 2 bad lines" in last, last
    assert "Traceback" not in err.stderr
    assert not (tmp_path / "err" / "metrics.jsonl").exists() or not _metrics(tmp_path / "err")  # no step ran
    skip = _run(_args(sft_data, tmp_path / "skip", *args, "model.data.train_ds.on_bad_record=skip"))
    assert skip.returncode == 0, skip.stderr[-3000:]
    assert "Traceback" not in skip.stderr
    assert "bad_record" in skip.stderr and ":4:" in skip.stderr  # both bad lines reported, with positions
    assert "2 x bad_record" in skip.stderr, skip.stderr[-3000:]  # lines, not occurrences


def test_packed_sequence_run_matches_padded_run(sft_data, tmp_path):
    """Same samples per step, packed into fewer rows: the same trained tokens and (to fp error) losses."""
    common = ["trainer.sft.max_steps=3", "trainer.sft.save_interval=100",
              "trainer.sft.val_check_interval=100", "model.data.train_ds.global_batch_size=8"]
    padded = _run(_args(sft_data, tmp_path / "padded", *common))
    packed = _run(_args(sft_data, tmp_path / "packed", *common, "model.data.train_ds.packed_sequence=True"))
    assert padded.returncode == 0, padded.stderr[-3000:]
    assert packed.returncode == 0, packed.stderr[-3000:]
    a, b = _metrics(tmp_path / "padded"), _metrics(tmp_path / "packed")
    assert [r["trained_tokens"] for r in a] == [r["trained_tokens"] for r in b]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * abs(x["loss"]), (x, y)


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory, megatron_single):
    from tests.servers_common import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("kinds"))  # a policy and a reward model, context 256


def test_restore_checks_kind_context_and_ignored_architecture(two_kinds, tmp_path):
    """Issue 12, section 5: SFT from a reward-model checkpoint, rows longer than the checkpoint's context:
    one line each, exit 2; an architecture key given with restore_from_path is named as ignored."""
    base = ["model.data.chat=True", f"model.data.train_ds.file_path={FIXTURE}",
            f"model.data.validation_ds.file_path={FIXTURE}", "model.data.train_ds.micro_batch_size=1",
            "model.data.train_ds.global_batch_size=1", "model.data.validation_ds.micro_batch_size=1",
            "model.data.validation_ds.global_batch_size=1", "trainer.precision=32", "trainer.sft.max_steps=1",
            "trainer.sft.val_check_interval=100", "exp_manager.create_tensorboard_logger=False"]
    rm = _run([*base, f"model.restore_from_path={two_kinds['rm']}", "model.data.train_ds.max_seq_length=256",
               f"exp_manager.explicit_log_dir={tmp_path / 'a'}"])
    assert rm.returncode == 2 and "Traceback" not in rm.stderr, rm.stderr[-3000:]
    assert rm.stderr.strip().splitlines()[-1].startswith("config error: model.restore_from_path=")
    assert "reward model checkpoint" in rm.stderr
    long = _run([*base, f"model.restore_from_path={two_kinds['policy']}",
                 "model.data.train_ds.max_seq_length=100000",
                 f"exp_manager.explicit_log_dir={tmp_path / 'b'}"])
    assert long.returncode == 2 and "Traceback" not in long.stderr, long.stderr[-3000:]
    last = long.stderr.strip().splitlines()[-1]
    assert "model.data.train_ds.max_seq_length=100000" in last and "context of 256" in last, last
    heads = _run([*base, f"model.restore_from_path={two_kinds['policy']}", "model.num_attention_heads=3",
                  "model.data.train_ds.max_seq_length=256", "model.data.validation_ds.max_seq_length=256",
                  f"exp_manager.explicit_log_dir={tmp_path / 'c'}"])
    assert heads.returncode == 0, heads.stderr[-3000:]
    warned = [x for x in heads.stderr.splitlines() if "ignored: model.num_attention_heads=3" in x]
    assert len(warned) == 1 and "the architecture comes from" in warned[0], heads.stderr[-3000:]


SEED_SIZES = {"trainer.num_nodes": "1", "trainer.devices": "1", "trainer.precision": "32",
              "model.tensor_model_parallel_size": "1", "model.pipeline_model_parallel_size": "1",
              "trainer.sft.max_steps": "3", "trainer.sft.val_check_interval": "3",
              "trainer.sft.save_interval": "3",
              "trainer.sft.limit_val_batches": "1", "model.data.train_ds.global_batch_size": "4",
              "model.data.validation_ds.global_batch_size": "4", "model.data.train_ds.max_seq_length": "256",
              "model.data.validation_ds.max_seq_length": "256", "model.optim.lr": "3e-3"}


def test_seed_sft_command_runs_from_its_nemo_aligner_path(sft_data, tmp_path, megatron_single):
    """The SteerLM seed's attribute-conditioned SFT command (tests/data/seed_sft_command.txt), every key kept,
    only paths and sizes changed, runs examples/nlp/gpt/train_gpt_sft.py and its loss falls."""
    import torch

    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.tokenizers import load_tokenizer
    from tests.helpers import tiny_llama

    tok = load_tokenizer("sentencepiece", str(sft_data["tokenizer"]))
    tok.save(str(tmp_path / "tokdir"))
    cfg = tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=256, encoder_seq_length=256,
                     make_vocab_size_divisible_by=64)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "llama70b", build_gpt_model(cfg), cfg, tokenizer_dir=tmp_path / "tokdir")
    words = seed_command("seed_sft_command.txt")[0]
    assert words[:2] == ["python", "examples/nlp/gpt/train_gpt_sft.py"]
    argv = re_rooted(words, {**SEED_SIZES, "model.restore_from_path": tmp_path / "llama70b",
                             "exp_manager.explicit_log_dir": tmp_path / "results" / "acsft_70b"},
                     {".file_path": sft_data["train"], "index_mapping_dir": tmp_path / "index"})
    assert len(argv) == 45  # every key of the seed's command is kept
    proc = run_in_session([sys.executable, str(ROOT / words[1]), *argv])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _metrics(tmp_path / "results" / "acsft_70b")
    losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], rows
    assert any("val_loss" in r for r in rows)
