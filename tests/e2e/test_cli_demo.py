"""The ``megatron-align`` command as users run it: bad configs fail in one line; the demo learns.

Each test runs the real console entry point in a subprocess (``python -m megatron_align.cli``).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_align.models.checkpoint import is_complete_checkpoint
from tests.helpers import ROOT, _clean_env, run_ranks


def _cli(*args, env_extra=None, timeout=600):
    env = _clean_env()
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "megatron_align.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["model.optim.lrr=1e-5"], "model.optim.lrr: no such key (did you mean model.optim.lr?)"),
        (["model.optim.lr=fast"], "model.optim.lr='fast' is not a float"),
        (["model.tensor_model_parallel_size=2"], "does not divide the world size 1"),
        (["trainer.devices=2", "model.pipeline_model_parallel_size=2", "model.num_layers=1"],
         "model.pipeline_model_parallel_size"),
        (["trainer.devices=2", "model.tensor_model_parallel_size=2", "model.num_attention_heads=3",
          "model.num_query_groups=null", "model.hidden_size=96"], "model.num_attention_heads"),
        (["model.precision=bf16"], "no such key"),
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


def test_demo_learns_and_saves_a_complete_checkpoint(tmp_path):
    run = tmp_path / "demo"
    proc = _cli("demo", "trainer.sft.max_steps=40", "trainer.sft.val_check_interval=20",
                f"exp_manager.explicit_log_dir={run}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_loss_after"] < 0.6 * summary["val_loss_before"], summary
    assert summary["last_train_loss"] < summary["first_train_loss"]
    assert is_complete_checkpoint(summary["checkpoint"])
    assert (run / "checkpoints" / "step=40" / "tokenizer" / "tokenizer.model").is_file()
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert sum("val_loss" in m for m in metrics) == 2
    assert "val loss" in proc.stdout
    plot = _cli("plot", str(run))
    assert plot.returncode == 0, plot.stderr
    assert (run / "plots" / "overview.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "plots" / "val_loss.png").is_file()
    missing = _cli("plot", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("plot error: ")


@pytest.mark.distributed
def test_demo_under_torchrun_tp2_matches_tp1_first_step(tmp_path):
    """Same seed, CPU initialisation: TP=2 starts from the same weights, so step 1's loss equals TP=1's."""
    steps = ["trainer.sft.max_steps=6", "trainer.sft.val_check_interval=3"]
    ref = _cli("demo", *steps, f"exp_manager.explicit_log_dir={tmp_path / 'tp1'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    entry = Path(sys.executable).parent / "megatron-align"  # the installed console script
    proc = run_ranks(entry,
                     ["demo", "trainer.devices=2", "model.tensor_model_parallel_size=2", *steps,
                      f"exp_manager.explicit_log_dir={tmp_path / 'tp2'}"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    m1 = [json.loads(x) for x in (tmp_path / "tp1" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "tp2" / "metrics.jsonl").read_text().splitlines()]
    assert abs(m1[0]["loss"] - m2[0]["loss"]) < 1e-4
    assert m2[-1]["loss"] < m2[0]["loss"]
