"""Offline alignment's sampler and labeler (seed 003) on tiny random models:

- the sampler writes ``n`` samples per prompt in prompt order, nothing dropped at the end; SIGKILLed after
  three different chunks and restarted, its file equals an uninterrupted run's byte for byte and ``_temp`` is
  gone; two data-parallel ranks (torchrun) write the same file;
- the labeler scores the samples with the reward model (the rewards equal an independent ``RewardScorer``
  pass over ``input + output`` + eos), runs the processor, and is resumable the same way.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, re_rooted, run_in_session, seed_command

SAMPLER = ROOT / "examples" / "nlp" / "gpt" / "offline" / "launch_random_sampler.py"
LABELER = ROOT / "examples" / "nlp" / "gpt" / "offline" / "launch_reward_labeler.py"
PROMPTS = [f"User: what is {k} plus {k}? Assistant:" for k in range(7)]


@pytest.fixture(scope="module")
def models(tmp_path_factory, megatron_single):
    import dataclasses

    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reward import build_reward_model
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece
    from tests.helpers import tiny_llama

    d = tmp_path_factory.mktemp("offline")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"input": p}) + "\n" for p in PROMPTS))
    tok = load_tokenizer("sentencepiece", str(train_sentencepiece(PROMPTS + ["plus is what"], d / "spm",
                                                                  vocab_size=300)))
    tok.save(str(d / "tokdir"))
    cfg = tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=128, encoder_seq_length=128,
                     make_vocab_size_divisible_by=64)
    torch.manual_seed(1)
    save_checkpoint(d / "policy", build_gpt_model(cfg), cfg, tokenizer_dir=d / "tokdir")
    rm_cfg = dataclasses.replace(cfg, num_attributes=1)
    torch.manual_seed(2)
    save_checkpoint(d / "rm", build_reward_model(rm_cfg), rm_cfg, tokenizer_dir=d / "tokdir")
    return d


def _sampler_args(d, out):
    return [f"gpt_model_file={d / 'policy'}", "trainer.precision=32", "data.micro_batch_size=4", "data.n=3",
            f"data.file_names=[{d / 'prompts.jsonl'}]", "data.max_seq_length=64",
            "inference.tokens_to_generate=8", "inference.temperature=0.9", f"output_file={out}",
            "checkpoint_interval=1"]


def _labeler_args(d, samples, out, *extra):
    return [f"gpt_model_file={d / 'rm'}", "trainer.precision=32", "data.micro_batch_size=4",
            f"data.file_names=[{samples}]", f"output_file={out}", "checkpoint_interval=1", *extra]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _resumes_to_the_same_bytes(script, args, ref, out, phase):
    for chunk in (0, 2, 4):
        killed = run_in_session([sys.executable, str(script), *args],
                                {"MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK": f"{phase}:{chunk}"})
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert not out.exists()
    done = run_in_session([sys.executable, str(script), *args])
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes() == ref.read_bytes()
    assert not (out.parent / f"{out.name}_temp").exists()


def test_sampler_writes_n_per_prompt_and_resumes_to_the_same_bytes(models):
    d = models
    ref = d / "samples.jsonl"
    proc = run_in_session([sys.executable, str(SAMPLER), *_sampler_args(d, ref)])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _rows(ref)
    assert [r["input"] for r in rows] == [p for p in PROMPTS for _ in range(3)]  # 21 rows: 6 batches, last 1
    assert all(set(r) == {"input", "output"} and isinstance(r["output"], str) for r in rows)
    assert len({r["output"] for r in rows}) > 15  # sampled, not repeated
    assert not (d / "samples.jsonl_temp").exists() and "7 prompts x 3 -> 21 samples" in proc.stdout
    _resumes_to_the_same_bytes(SAMPLER, _sampler_args(d, d / "resumed.jsonl"), ref, d / "resumed.jsonl",
                               "samples")


@pytest.mark.distributed
def test_two_data_parallel_ranks_write_the_single_process_file(models):
    from tests.helpers import run_ranks

    d = models
    ref = d / "samples.jsonl"
    if not ref.exists():
        assert run_in_session([sys.executable, str(SAMPLER), *_sampler_args(d, ref)]).returncode == 0
    out = d / "dp2.jsonl"
    proc = run_ranks(SAMPLER, [*_sampler_args(d, out), "trainer.devices=2"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert out.read_bytes() == ref.read_bytes()


def test_labeler_scores_input_plus_output_and_resumes_to_the_same_bytes(models):
    from megatron_align.scoring.reward_model import RewardScorer

    d = models
    samples = d / "label_in.jsonl"
    samples.write_text("".join(json.dumps({"input": p, "output": f" {k} {j}"}) + "\n"
                               for k, p in enumerate(PROMPTS) for j in range(3)))
    ref = d / "labelled.jsonl"
    proc = run_in_session([sys.executable, str(LABELER), *_labeler_args(d, samples, ref, "processor=null")])
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = _rows(ref)
    scorer = RewardScorer(d / "rm", "32", add_eos=True)  # input + output + eos, as NeMo-Aligner's labeler
    want = [r[0] for r in scorer.score([r["input"] + r["output"] for r in rows])]
    assert [r["reward"] for r in rows] == pytest.approx(want, abs=1e-5) and len(rows) == 21
    best = run_in_session([sys.executable, str(LABELER),
                           *_labeler_args(d, samples, d / "rs.jsonl", "processor=rs")])
    assert best.returncode == 0, best.stderr[-3000:]
    rs = _rows(d / "rs.jsonl")
    assert [r["input"] for r in rs] == PROMPTS
    for k, r in enumerate(rs):  # the best of each prompt's three (first on ties)
        group = [x for x in rows if x["input"] == PROMPTS[k]]
        assert r["output"] == max(group, key=lambda x: x["reward"])["output"] and "reward" not in r
    args = _labeler_args(d, samples, d / "null_resumed.jsonl", "processor=null")
    _resumes_to_the_same_bytes(LABELER, args, ref, d / "null_resumed.jsonl", "rewards")


def test_the_seeds_three_commands_run_in_sequence(models, tmp_path):
    """Seed 003's sampler, labeler (rs) and SFT commands as written (tests/data/seed_offline_commands.txt),
    only paths and sizes changed: the SFT model lands at RESULT/checkpoints/megatron_gpt_sft.nemo as a real
    directory, and after the seed loop's move / delete / move a second SFT in the same log dir starts from its
    restore path instead of resuming."""
    import shutil

    d = models
    sample_cmd, label_cmd, sft_cmd = seed_command("seed_offline_commands.txt")
    assert [c[1] for c in (sample_cmd, label_cmd, sft_cmd)] == [
        "examples/nlp/gpt/offline/launch_random_sampler.py",
        "examples/nlp/gpt/offline/launch_reward_labeler.py", "examples/nlp/gpt/train_gpt_sft.py"]
    generated, filtered = tmp_path / "generated_samples.jsonl", tmp_path / "filtered.jsonl"
    results = tmp_path / "res"
    sizes = {"trainer.devices": "1", "trainer.precision": "32", "inference.tokens_to_generate": "8",
             "data.micro_batch_size": "4", "data.max_seq_length": "64", "data.n": "4"}
    prompts = f"[{d / 'prompts.jsonl'}]"
    runs = [(sample_cmd, {**sizes, "gpt_model_file": d / "policy", "data.file_names": prompts,
                          "output_file": generated}),
            (label_cmd, {**sizes, "gpt_model_file": d / "rm", "data.file_names": f"[{generated}]",
                         "output_file": filtered, "data.max_seq_length": "128"}),
            (sft_cmd, {"trainer.devices": "1", "trainer.precision": "32",
                       "model.restore_from_path": d / "policy", "model.data.train_ds.global_batch_size": "4",
                       "model.data.train_ds.max_seq_length": "128",
                       "model.data.train_ds.file_path": filtered, "exp_manager.explicit_log_dir": results,
                       "trainer.sft.save_interval": "1"})]
    for words, values in runs:
        proc = run_in_session([sys.executable, str(ROOT / words[1]), *re_rooted(words, values)])
        assert proc.returncode == 0, (words[1], proc.stderr[-5000:])
    assert len(_rows(generated)) == 28 and [r["input"] for r in _rows(filtered)] == PROMPTS
    final = results / "checkpoints" / "megatron_gpt_sft.nemo"
    assert final.is_dir() and not final.is_symlink() and (final / "model_config.yaml").is_file()
    metrics = [json.loads(x) for x in (results / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1]  # max_steps=-1: one epoch, 7 rows // 4
    assert not any("val_loss" in r for r in metrics)
    shutil.move(final, results / "temp.nemo")  # the seed loop's housekeeping between iterations
    shutil.rmtree(results / "checkpoints")
    (results / "checkpoints").mkdir()
    shutil.move(results / "temp.nemo", final)
    again = run_in_session([sys.executable, str(ROOT / sft_cmd[1]),
                            *re_rooted(sft_cmd, {**runs[2][1], "model.restore_from_path": final})])
    assert again.returncode == 0, again.stderr[-5000:]
    assert "resumed from" not in again.stderr and "megatron_gpt_sft.nemo" in again.stderr


def test_the_seeds_loop_script_runs_two_iterations_and_resumes(models, tmp_path):
    """examples/nlp/gpt/offline/online_rs.sh (the seed's Online Rejection Sampling loop) with paths and sizes
    changed: one iteration, then a rerun with TRAINING_ITERS=2 continues at iteration 1 (ITER_LOG_PATH) from
    the first iteration's model, on the next slice of prompts."""
    d = models
    script = ROOT / "examples" / "nlp" / "gpt" / "offline" / "online_rs.sh"
    res = tmp_path / "sft_results"
    env = {"PYTHON": sys.executable, "ROLLOUT_BATCH_SIZE": "4", "PROMPTS_PATH": str(d / "prompts.jsonl"),
           "GENERATE_SAMPLES_PATH": str(tmp_path / "generated.jsonl"),
           "LABELED_SAMPLES_PATH": str(tmp_path / "filtered.jsonl"), "POLICY_MODEL_PATH": str(d / "policy"),
           "REWARD_MODEL_PATH": str(d / "rm"), "RESULT_PATH": str(res),
           "ITER_LOG_PATH": str(tmp_path / "iter.log"), "DEVICES": "1", "PRECISION": "32",
           "TOKENS_TO_GENERATE": "8", "SAMPLE_MICRO_BATCH_SIZE": "4", "SAMPLE_MAX_SEQ_LENGTH": "64",
           "NUM_SAMPLES": "2", "LABEL_MICRO_BATCH_SIZE": "4", "MAX_SEQ_LENGTH": "128",
           "GLOBAL_BATCH_SIZE": "2"}
    first = run_in_session(["bash", str(script)], {**env, "TRAINING_ITERS": "1"}, timeout=900)
    assert first.returncode == 0, first.stderr[-5000:]
    assert (tmp_path / "iter.log").read_text().strip() == "1"
    final = res / "checkpoints" / "megatron_gpt_sft.nemo"
    assert final.is_dir() and [p.name for p in (res / "checkpoints").iterdir()] == ["megatron_gpt_sft.nemo"]
    assert "4 prompts x 2 -> 8 samples" in first.stdout  # iteration 0: prompts 0-3
    second = run_in_session(["bash", str(script)], {**env, "TRAINING_ITERS": "2"}, timeout=900)
    assert second.returncode == 0, second.stderr[-5000:]
    assert (tmp_path / "iter.log").read_text().strip() == "2"
    assert "3 prompts x 2 -> 6 samples" in second.stdout  # iteration 1: prompts 4-6, the slice's short tail
    assert str(final) in second.stderr  # the policy of iteration 1 is iteration 0's model
    assert not list(tmp_path.glob("generated.jsonl*")) and not list(tmp_path.glob("filtered.jsonl*"))


def test_offline_loop_command_resumes_at_the_step_that_died(models, tmp_path):
    """``megatron-align offline-loop``: one iteration of sample -> rs -> SFT, then the command with 2
    iterations SIGKILLed in iteration 1's labeler; the rerun keeps iteration 0 and iteration 1's samples and
    finishes; a last run skips both."""
    from megatron_align.algorithms.offline.loop import DONE

    d = models
    out = tmp_path / "loop"
    cli = str(Path(sys.executable).parent / "megatron-align")
    args = ["offline-loop", f"output_dir={out}", "iterations=2",
            "rollout_batch_size=4", f"sampler.gpt_model_file={d / 'policy'}", "sampler.trainer.precision=32",
            f"sampler.data.file_names=[{d / 'prompts.jsonl'}]", "sampler.data.n=2",
            "sampler.data.micro_batch_size=4", "sampler.inference.tokens_to_generate=8",
            "sampler.data.max_seq_length=64", f"labeler.gpt_model_file={d / 'rm'}",
            "labeler.trainer.precision=32", "labeler.data.micro_batch_size=2",
            "sft.trainer.precision=32", "sft.model.data.train_ds.global_batch_size=2",
            "sft.model.data.train_ds.micro_batch_size=1", "sft.model.data.train_ds.max_seq_length=128",
            "sft.exp_manager.create_tensorboard_logger=False"]
    one = run_in_session([cli, *args, "iterations=1"])
    assert one.returncode == 0, one.stderr[-5000:]
    killed = run_in_session([cli, *args], {"MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK": "rewards:1"})
    assert killed.returncode == -9, killed.stderr[-5000:]
    assert (out / "iter_0" / "sft" / DONE).is_file() and not (out / "iter_1" / "sft").exists()
    generated = (out / "iter_1" / "generated.jsonl").read_bytes()
    rerun = run_in_session([cli, *args])
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert rerun.stdout.count("skipped (done)") == 1 and "iteration 1: model" in rerun.stdout
    assert (out / "iter_1" / "generated.jsonl").read_bytes() == generated  # not sampled again
    first = json.loads((out / "iter_0" / "sft" / DONE).read_text())["checkpoint"]
    assert first.endswith("megatron_gpt_sft.nemo") and f"SFT starts from {first}" in rerun.stderr
    assert len(_rows(out / "iter_1" / "filtered.jsonl")) == 3  # rs: one per prompt of slice 1 (prompts 4-6)
    again = run_in_session([cli, *args])
    assert again.returncode == 0 and again.stdout.count("skipped (done)") == 2, again.stdout
