"""The run skeleton's loop (training/run.train_loop) with a fake stage: cadences, non-finite counting, resume
state, metrics rows. The stages' own runs are covered end to end in tests/e2e/test_sft.py and
test_reward_model.py."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_align.config.model import OptimConfig, OptimSchedConfig
from megatron_align.config.schema import ExpManagerConfig, LoopSection
from megatron_align.training.run import RunStart, StepOutcome, Trainee, train_loop
from megatron_align.training.step import NonFiniteError, StepResult


class _Ckpts:
    def __init__(self):
        self.saved = []

    def save(self, step, model, model_cfg, tokenizer_dir, optimizer, train_state, metrics):
        self.saved.append((step, dict(train_state), dict(metrics)))
        return Path(f"/ckpt/step={step}")


def _setup(tmp_path, state=None, **loop):
    cfg = SimpleNamespace(exp_manager=ExpManagerConfig(create_tensorboard_logger=False),
                          model=SimpleNamespace(optim=OptimConfig(lr=0.5, sched=OptimSchedConfig(
                              name="Constant", warmup_steps=0))))
    run = RunStart(env=None, run_dir=tmp_path, rank0=True, tokenizer=None, tokenizer_dir=tmp_path / "tok",
                   model_cfg=None)
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
    trainee = Trainee(model=None, ddp=None, optimizer=optimizer, ckpts=_Ckpts(),
                      state=state or {"step": 0, "consumed_samples": 0, "nonfinite_steps": 0})
    return cfg, run, trainee, LoopSection(**loop)


def _rows(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_cadences_consumed_samples_and_summary(tmp_path):
    cfg, run, trainee, loop = _setup(tmp_path, val_check_interval=3, save_interval=4)
    seen, vals = [], []

    def step_fn(consumed):
        seen.append(consumed)
        return StepOutcome(StepResult(loss=float(len(seen)), num_tokens=10.0, grad_norm=1.0, skipped=False),
                           tokens=10.0, samples=4, row={"extra": len(seen)})

    def validate():
        vals.append(len(seen))
        return {"val_loss": 0.1 * len(seen)}

    summary = train_loop(cfg, run, trainee, stage="sft", loop=loop, max_steps=7, global_batch_size=4,
                         step_fn=step_fn, validate=validate, epoch_of=lambda c: c // 8)
    assert seen == [0, 4, 8, 12, 16, 20, 24]  # each step at consumed_samples
    assert vals == [3, 6, 7]  # every val_check_interval steps and at the end
    assert [s for s, _, _ in trainee.ckpts.saved] == [4, 7]  # every save_interval steps and at the end
    step, state, metrics = trainee.ckpts.saved[-1]
    assert state == {"step": 7, "consumed_samples": 28, "epoch": 3, "nonfinite_steps": 0,
                     "consecutive_nonfinite": 0}
    # checkpoints are ranked by any logged metric (monitor=val_loss, loss, global_step, ...)
    assert metrics["val_loss"] == pytest.approx(0.7) and metrics["loss"] == 7.0
    assert metrics["global_step"] == metrics["step"] == 7 and metrics["consumed_samples"] == 28
    assert summary["losses"] == {s: float(s) for s in range(1, 8)}
    assert summary["val"] == {3: {"val_loss": pytest.approx(0.3)}, 6: {"val_loss": pytest.approx(0.6)},
                              7: {"val_loss": pytest.approx(0.7)}}
    assert summary["steps"] == 7 and summary["last_checkpoint"] == "/ckpt/step=7"
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert rows[0]["lr"] == 0.5 and trainee.optimizer.param_groups[0]["lr"] == 0.5
    assert rows[2]["extra"] == 3 and "val_loss" in rows[2] and "val_loss" not in rows[3]
    assert rows[0]["tokens_per_s"] > 0 and rows[0]["samples_per_s"] > 0


def test_nonfinite_steps_stop_the_run_but_empty_batches_do_not_count(tmp_path):
    cfg, run, trainee, loop = _setup(tmp_path, max_consecutive_nonfinite=3, save_interval=100)
    plan = ["bad", "bad", "ok", "empty", "bad", "bad", "bad", "ok"]

    def step_fn(consumed):
        kind = plan[consumed // 2]
        res = StepResult(loss=float("nan") if kind == "bad" else 1.0,
                         num_tokens=0.0 if kind == "empty" else 5.0, grad_norm=1.0, skipped=kind != "ok")
        return StepOutcome(res, tokens=5.0, empty=kind == "empty")

    stop = r"3 steps in a row.*step 7.*trainer\.rm\.max_consecutive_nonfinite"
    with pytest.raises(NonFiniteError, match=stop):
        train_loop(cfg, run, trainee, stage="rm", loop=loop, max_steps=8, global_batch_size=2,
                   step_fn=step_fn, validate=None, epoch_of=lambda c: 0)
    rows = _rows(tmp_path)  # the rows before the stop are on disk (metrics closed in finally)
    assert [r["skipped"] for r in rows] == [1, 1, 0, 0, 1, 1]
    assert rows[3]["loss"] == 0.0  # an empty batch logs loss 0, not NaN
    assert trainee.state["nonfinite_steps"] == 5


def test_resume_continues_counts_and_consecutive_run(tmp_path):
    state = {"step": 5, "consumed_samples": 10, "nonfinite_steps": 2, "consecutive_nonfinite": 2}
    cfg, run, trainee, loop = _setup(tmp_path, state=state, max_consecutive_nonfinite=3, save_interval=1)
    seen = []

    def step_fn(consumed):
        seen.append(consumed)
        return StepOutcome(StepResult(loss=1.0, num_tokens=1.0, grad_norm=1.0, skipped=False), tokens=1.0)

    summary = train_loop(cfg, run, trainee, stage="sft", loop=loop, max_steps=6, global_batch_size=2,
                         step_fn=step_fn, validate=None, epoch_of=lambda c: 0)
    assert seen == [10] and summary["resumed_from_step"] == 5 and summary["steps"] == 6
    assert trainee.ckpts.saved[0][1]["nonfinite_steps"] == 2  # kept; a good step resets the run of bad ones
    assert trainee.ckpts.saved[0][1]["consecutive_nonfinite"] == 0
