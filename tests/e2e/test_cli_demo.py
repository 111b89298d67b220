"""The ``megatron-align demo`` command as users run it: bad configs fail in one line; the SteerLM demo runs
every stage, writes its artefacts and learns (the reward model reads verbosity far better than the mean
predictor, its labels carry that to the annotated chats, AC-SFT's validation loss falls).

Each test runs the real console entry point in a subprocess (``python -m megatron_align.cli``) on the CI-sized
preset (``size=tiny``, about a minute). The tiny model is too small to learn steering in that time (measured:
verbosity Spearman 0.1-0.4 over several settings), so steering is checked for shape here; the full-size run
(``megatron-align demo``, minutes) is where the README's acceptance numbers come from.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_align.data.steerlm.annotate import check_annotated
from megatron_align.models.checkpoint import checkpoint_kind, is_complete_checkpoint
from tests.helpers import ROOT, _clean_env, run_ranks

TINY = ["size=tiny"]


def _cli(*args, env_extra=None, timeout=900):
    env = _clean_env()
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "megatron_align.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["model.optim.lrr=1e-5"], "model.optim.lrr: no such key (did you mean model.optim.lr?)"),
        (["model.optim.lr=fast"], "model.optim.lr='fast' is not a float"),
        (["ac_sft.max_step=5"], "ac_sft.max_step: no such key (did you mean ac_sft.max_steps?)"),
        (["model.tensor_model_parallel_size=2"], "does not divide the world size 1"),
        (["trainer.devices=2", "model.pipeline_model_parallel_size=2", "model.num_layers=1"],
         "model.pipeline_model_parallel_size"),
        (["trainer.devices=2", "model.tensor_model_parallel_size=2", "model.num_attention_heads=3",
          "model.num_query_groups=null", "model.hidden_size=96"], "model.num_attention_heads"),
        (["model.precision=bf16"], "no such key"),
        (["size=huge"], "size='huge' is not one of full|tiny"),
        (["evaluation.attributes=[verbosity,wit]"], "evaluation.attributes"),
        (["bootstrap.samples_per_prompt=0"], "bootstrap.samples_per_prompt=0 must be at least 1"),
        (["trainer.devices=2"], "this is a single process: start it with torchrun --nproc_per_node 2"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(overrides, expect):
    proc = _cli("demo", *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: ") and expect in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_launch_size_mismatch_is_one_line(tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    proc = _cli("demo", env_extra=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(
        "config error: trainer.num_nodes * trainer.devices = 1*1 = 1 but the launcher started 2 processes: "
        "set trainer.devices=2"), proc.stderr


def test_tiny_demo_runs_every_steerlm_stage_and_learns(tmp_path):
    run = tmp_path / "demo"
    proc = _cli("demo", *TINY, f"exp_manager.explicit_log_dir={run}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((run / "results.json").read_text())
    stages = results["stages"]
    assert list(stages) == ["data", "base_model", "reward_model", "annotation", "ac_sft", "bootstrap",
                            "evaluation"]
    for n in range(7):  # a header per stage
        assert f"=== [{n}/6] " in proc.stdout
    # one tokenizer load line per run, and no log line glued to a progress bar (issue 12, section 6)
    assert proc.stderr.count("loaded SentencePieceTokenizer") == 1, proc.stderr[-4000:]
    logged = [s for s in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", proc.stderr))
              if " INFO megatron_align." in s]
    assert logged and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[rank", s) for s in logged), logged

    # data and tokenizer
    for name in ("train", "val", "train_reg", "val_reg", "base_train", "base_val", "ac_sft_chats",
                 "ac_sft_annotated"):
        assert (run / "data" / f"{name}.jsonl").is_file(), name
    assert (run / "tokenizer" / "tokenizer.model").is_file()
    base_chats = _jsonl(run / "data" / "base_train.jsonl")
    assert all(t["label"] is None for r in base_chats for t in r["conversations"])

    # one complete checkpoint of the right kind per training stage, with its metrics
    kinds = {"base_model": "gpt", "reward_model": "reward", "ac_sft": "gpt", "bootstrap": "gpt"}
    for stage, kind in kinds.items():
        ckpt = stages[stage]["checkpoint"]
        assert is_complete_checkpoint(ckpt) and checkpoint_kind(ckpt) == kind, (stage, ckpt)
    for d in ("base_model", "reward_model", "ac_sft", "bootstrap/sft"):
        assert (run / d / "metrics.jsonl").is_file(), d

    # step 2: every labelled turn relabelled by the reward model, nothing else changed
    source = _jsonl(run / "data" / "ac_sft_chats.jsonl")
    annotated = _jsonl(run / "data" / "ac_sft_annotated.jsonl")
    assert len(source) == len(annotated) == 600
    for src, ann in zip(source, annotated):
        check_annotated(src, ann, turns="labeled")
    assert sum(s != a for s, a in zip(source, annotated)) > 300  # the reward model's labels, not the rules'
    # step 4: the samples, relabelled, then mixed with replayed step-3 chats for the fine-tuning
    boot = _jsonl(run / "bootstrap" / "annotated.jsonl")
    assert 0 < len(boot) <= 16 and stages["bootstrap"]["samples"] == len(boot)
    mixed = _jsonl(run / "bootstrap" / "train.jsonl")
    assert mixed[:len(boot)] == boot and len(mixed) - len(boot) == 16 == stages["bootstrap"]["replayed"]
    assert all(r in annotated for r in mixed[len(boot):])

    # learning: the reward model reads verbosity far better than the mean (held out, and on the chats it
    # annotated, against the rules' labels); AC-SFT's validation loss falls
    baseline = results["mean_predictor_mae"]["verbosity"]
    assert results["rm_val_mae"]["verbosity"] < 0.8 * baseline, results["rm_val_mae"]
    assert stages["annotation"]["mae_vs_rules"]["verbosity"] < 0.8 * baseline, stages["annotation"]
    val = stages["ac_sft"]["val_loss"]
    assert len(val) == 2 and val["60"] < val["30"], val
    steering = results["steering"]
    assert list(steering) == ["verbosity", "helpfulness", "toxicity"]
    for res in steering.values():
        assert res["requested"] == [v for v in range(5) for _ in range(4)]
        assert len(res["measured"]) == 20 and set(res["measured"]) <= set(range(5))

    # table, plot, samples; the table is printed
    table = (run / "table.md").read_text()
    assert table.splitlines()[0].startswith("| attribute | Spearman |")
    assert sum(line.startswith("| verbosity |") for line in table.splitlines()) == 1
    assert "| verbosity |" in proc.stdout
    assert (run / "steering.png").read_bytes()[:4] == b"\x89PNG"
    assert len(_jsonl(run / "samples.jsonl")) == 3 * 5 * 4

    # the run directory plots: one figure per training stage below it (issue 12, section 6)
    plot = _cli("plot", str(run))
    assert plot.returncode == 0, plot.stderr[-3000:]
    assert sorted(Path(p).name for p in plot.stdout.split()) == [
        "ac_sft.png", "base_model.png", "bootstrap_sft.png", "reward_model.png"]

    # the README's steer example, as printed, on the demo's own checkpoint (issue 12, section 6)
    ckpt = stages["ac_sft"]["checkpoint"]
    steer = _cli("steer", "--checkpoint", str(ckpt), "--prompt", "What is 3 apples plus 4 apples?",
                 "--values", "verbosity:4,humor:3")
    assert steer.returncode == 0 and steer.stdout.strip(), steer.stderr[-3000:]
    cut = _cli("steer", "--checkpoint", str(ckpt), "--prompt", "What is 3 apples plus 4 apples?",
               "--tokens-to-generate", "100000")
    assert cut.returncode == 0 and "note: --tokens-to-generate 100000 does not fit" in cut.stderr, cut.stderr


FAST = [*TINY, "base_model.max_steps=4", "reward_model.max_steps=4", "ac_sft.max_steps=4",
        "bootstrap.max_steps=2", "bootstrap.num_prompts=2", "evaluation.num_prompts=2",
        "evaluation.attributes=[verbosity]", "data.num_train=64", "data.num_val=32", "data.num_ac_sft=32"]


@pytest.mark.distributed
def test_demo_under_torchrun_tp2_matches_tp1_first_step(tmp_path):
    """Same seed, CPU initialisation: at TP=2 the base model starts from the same weights, so its first loss
    equals TP=1's; every stage runs collectively (generation, scoring) and rank 0 writes the results."""
    ref = _cli("demo", *FAST, f"exp_manager.explicit_log_dir={tmp_path / 'tp1'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    entry = Path(sys.executable).parent / "megatron-align"  # the installed console script
    proc = run_ranks(entry, ["demo", "trainer.devices=2", "model.tensor_model_parallel_size=2", *FAST,
                             f"exp_manager.explicit_log_dir={tmp_path / 'tp2'}"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    m1 = _jsonl(tmp_path / "tp1" / "base_model" / "metrics.jsonl")
    m2 = _jsonl(tmp_path / "tp2" / "base_model" / "metrics.jsonl")
    assert abs(m1[0]["loss"] - m2[0]["loss"]) < 1e-2  # bf16 weights; TP splits the matmuls differently
    results = json.loads((tmp_path / "tp2" / "results.json").read_text())
    assert len(results["steering"]["verbosity"]["measured"]) == 5 * 2
    assert (tmp_path / "tp2" / "steering.png").is_file()
