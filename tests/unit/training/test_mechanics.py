"""Training mechanics: LR schedule, resumable sampler, metrics, plots, checkpoint retention, NaN guard."""

import json
import math
import re
import subprocess
import sys
import textwrap
from functools import partial

import pytest
import torch

from megatron_align.config.model import OptimConfig, OptimSchedConfig
from megatron_align.training.lr import lr_at
from megatron_align.training.sampler import GlobalBatchSampler


def test_cosine_annealing_with_warmup_and_constant_tail():
    """NeMo CosineAnnealing: linear warm-up, cosine to min_lr, min_lr held for constant_steps at the end."""
    o = OptimConfig(lr=1.0, sched=OptimSchedConfig(name="CosineAnnealing", warmup_steps=4, constant_steps=3,
                                                   min_lr=0.1))
    lrs = [lr_at(s, o, max_steps=20) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)  # start of the decay
    decay = 20 - 4 - 3
    for s in range(4, 4 + decay):
        t = (s - 4) / decay
        assert lrs[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    assert lrs[-3:] == pytest.approx([0.1, 0.1, 0.1])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    const = OptimConfig(lr=2.0, sched=OptimSchedConfig(name="Constant", warmup_steps=2))
    assert [lr_at(s, const, 10) for s in range(4)] == pytest.approx([1.0, 2.0, 2.0, 2.0])


def test_sampler_partitions_global_batches_and_is_a_pure_function_of_consumed_samples():
    n, gbs, mbs, dp = 23, 8, 2, 2
    ranks = [GlobalBatchSampler(n, gbs, mbs, r, dp, seed=7) for r in range(dp)]
    assert ranks[0].num_microbatches == 2
    seen = []
    for step in range(6):
        per_rank = [sum(s.microbatches(step * gbs), []) for s in ranks]
        assert sorted(per_rank[0] + per_rank[1]) == sorted(ranks[0].global_indices(step * gbs))
        seen += ranks[0].global_indices(step * gbs)
    # the first epoch (23 samples) is a permutation of the dataset
    assert sorted(seen[:n]) == list(range(n))
    fresh = GlobalBatchSampler(n, gbs, mbs, 1, dp, seed=7)
    assert fresh.microbatches(4 * gbs) == ranks[1].microbatches(4 * gbs)  # resume needs only the position
    assert GlobalBatchSampler(n, gbs, mbs, 0, dp, seed=8).global_indices(0) != ranks[0].global_indices(0)
    with pytest.raises(ValueError, match="not a multiple"):
        GlobalBatchSampler(n, 6, 4, 0, 1, seed=0)


def test_metrics_writer_jsonl_tensorboard_wandb_offline_and_plot(tmp_path, monkeypatch):
    from megatron_align.training.metrics import MetricsWriter
    from megatron_align.training.plot import plot_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    w = MetricsWriter(tmp_path, enabled=True, total_steps=5, wandb=True, wandb_kwargs={"project": "t"})
    for step in range(1, 6):
        w.log(step, {"loss": 5.0 / step, "lr": 1e-3, **({"val_loss": 4.0 / step} if step % 2 == 0 else {})})
        w.progress(step, loss=5.0 / step)
    w.log(6, {"loss": float("nan")})
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["loss"] == "nan"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    written = plot_run(tmp_path)
    names = {p.name for p in written}
    assert {"loss.png", "val_loss.png", "lr.png", "overview.png"} <= names
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    # a resumed run from step 3 drops rows after 3 and appends
    w2 = MetricsWriter(tmp_path, enabled=True, total_steps=5, start_step=3, tensorboard=False)
    w2.log(4, {"loss": 0.1})
    w2.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 0.1


def test_disabled_metrics_writer_touches_nothing(tmp_path):
    from megatron_align.training.metrics import MetricsWriter

    w = MetricsWriter(tmp_path / "x", enabled=False, total_steps=3)
    w.log(1, {"loss": 1.0})
    w.progress(1)
    w.close()
    assert not (tmp_path / "x").exists()


def _tiny_setup(megatron_single):
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.training.setup import prepare_for_training
    from tests.helpers import tiny_llama

    cfg = tiny_llama()
    cfg.optim.name = "adamw"
    cfg.optim.lr = 1e-2
    model = build_gpt_model(cfg)
    ddp, opt = prepare_for_training(model, cfg.optim, "32")
    return cfg, model, ddp, opt


def _mb(seed=0):
    from tests.helpers import positions, tokens

    tok = tokens(2, 16, 1000, seed=seed)
    return [{"tokens": tok, "labels": tok.roll(-1, 1), "loss_mask": torch.ones(2, 16),
             "position_ids": positions(tok)}]


def test_checkpoint_manager_keeps_top_k_and_newest_and_resumes(tmp_path, megatron_single):
    from megatron_align.training.checkpointing import CheckpointManager

    cfg, model, ddp, opt = _tiny_setup(megatron_single)
    mgr = CheckpointManager(tmp_path, save_top_k=2, monitor="val_loss", mode="min")
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]:
        mgr.save(step, model, cfg, None, opt, {"step": step}, {"val_loss": val})
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step=2", "step=3", "step=4"]  # best two (1.0, 2.0) + the newest
    (tmp_path / "checkpoints" / "step=5.incomplete").mkdir()
    assert mgr.resume(model, opt)["step"] == 4
    assert not (tmp_path / "checkpoints" / "step=5.incomplete").exists()


def test_nonfinite_loss_skips_the_update_and_keeps_weights(megatron_single):
    from megatron_align.training.schedule import lm_forward_step
    from megatron_align.training.step import train_step

    cfg, model, ddp, opt = _tiny_setup(megatron_single)

    def nan_forward(data_iterator, model):
        out, loss_fn = lm_forward_step(data_iterator, model)
        return out * float("nan"), loss_fn

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train_step(ddp, opt, _mb(), 16, 2, forward_step_func=nan_forward)
    assert res.skipped and math.isnan(res.loss)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    ok = train_step(ddp, opt, _mb(), 16, 2)
    assert not ok.skipped and math.isfinite(ok.loss) and ok.num_tokens == 32
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_micro_batch_accumulation_equals_one_big_batch(megatron_single):
    """mbs 1 x accumulation 4 == mbs 4 x 1: same loss and same gradients (per-token normalization)."""
    from megatron_align.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401
    from megatron_align.training.schedule import forward_backward
    from tests.helpers import positions, tokens

    cfg, model, ddp, opt = _tiny_setup(megatron_single)
    tok = tokens(4, 16, 1000, seed=5)
    mask = torch.ones(4, 16)
    mask[0, :10] = 0  # uneven token counts per sample: a per-micro-batch mean would differ
    mask[3, 5:] = 0
    big = [{"tokens": tok, "labels": tok.roll(-1, 1), "loss_mask": mask, "position_ids": positions(tok)}]
    small = [{k: v[i:i + 1] for k, v in big[0].items()} for i in range(4)]

    def grads_and_loss(mbs, size):
        ddp.zero_grad_buffer()
        res = forward_backward([ddp], mbs, len(mbs), 16, size)
        grads = {n: p.main_grad.clone() for n, p in model.named_parameters()}
        return res["loss_sum"] / res["num_tokens"], grads

    loss_big, g_big = grads_and_loss(big, 4)
    loss_small, g_small = grads_and_loss(small, 1)
    assert loss_small == pytest.approx(loss_big, rel=1e-6)
    for n in g_big:
        torch.testing.assert_close(g_small[n], g_big[n], rtol=1e-5, atol=1e-7)


_ = partial  # keep import for readers of the NaN test pattern


def test_plot_of_a_directory_of_stages_draws_one_figure_per_stage(tmp_path):
    """``megatron-align plot runs/steerlm_demo``: every stage below the directory, one figure each; a line
    cut short by a crash is skipped; a directory without any metrics is a one-line error."""
    from megatron_align.cli import main as cli_main
    from megatron_align.training.plot import plot_run

    for stage in ("base_model", "bootstrap/sft"):
        (tmp_path / stage).mkdir(parents=True)
        rows = [json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-3, "val_loss": 2.0 / s}) for s in (1, 2, 3)]
        (tmp_path / stage / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 4, "lo')
    (tmp_path / "data").mkdir()
    written = plot_run(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "plots/base_model.png", "plots/bootstrap_sft.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert cli_main(["plot", str(tmp_path / "data")]) == 2


def test_log_lines_are_not_glued_to_an_open_progress_bar():
    """While a bar is open (the training bar, the demo's stage bars) a log record starts its own line."""
    script = textwrap.dedent("""
        import logging
        from megatron_align.log import progress_bar, setup_logging
        setup_logging()
        log = logging.getLogger("megatron_align.probe")
        outer = progress_bar(4, "train")
        outer.update(1)
        log.info("during the bar")
        inner = progress_bar(2, "annotate")
        inner.update(1)
        log.warning("during two bars")
        inner.close()
        log.info("during the outer bar again")
        outer.close()
        log.info("after the bars")
        assert [type(h).__name__ for h in logging.getLogger().handlers] == ["StreamHandler"]
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    segments = re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", res.stderr))  # cursor moves dropped
    logged = [s for s in segments if "megatron_align.probe:" in s]
    assert len(logged) == 4, res.stderr
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[rank 0\] (INFO|WARNING) ")
    assert all(stamp.match(s) for s in logged), logged
