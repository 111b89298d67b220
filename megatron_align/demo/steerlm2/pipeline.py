"""``megatron-align demo steerlm2``: SteerLM 2.0 on the built-in world, from the SteerLM demo's models.

0. the SteerLM demo run (``steerlm_run_dir``; run first when it has no ``results.json``): its final model is
   Q' (the start policy), its base model P(y|x), its regression reward model P(a|x,y);
1. prompts (``chats.jsonl``): held-out questions, each asking for nine random attribute values;
2. ``rounds`` SteerLM 2.0 rounds (``rounds/round_<r>/``: the builder's records, then training;
   ``algorithms/steerlm2_rounds.py``);
3. the SteerLM demo's steering sweep (each attribute x requested 0..4 on held-out questions, measured by the
   rules) on the start model and after each round: the mean absolute error |requested - measured| per
   attribute and overall; ``results.json``, ``table.md``, ``mae.png``.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _steerlm_run(cfg) -> dict:
    """The SteerLM demo's results (running it first when ``steerlm_run_dir`` has none)."""
    run = Path(cfg.steerlm_run_dir)
    if not (run / "results.json").is_file():
        from megatron_align.config import load_config
        from megatron_align.demo.steerlm.config import DemoConfig
        from megatron_align.demo.steerlm.config import with_size_preset as steerlm_preset
        from megatron_align.demo.steerlm.pipeline import run_demo

        logger.info("no SteerLM demo run in %s: running it (size=%s)", run, cfg.steerlm_size)
        run_demo(load_config(DemoConfig, None, steerlm_preset(
            [f"size={cfg.steerlm_size}", f"exp_manager.explicit_log_dir={run}",
             f"trainer.precision={cfg.trainer.precision}"])))
    return json.loads((run / "results.json").read_text())


def _chats(cfg, path: Path) -> None:
    from megatron_align.data.steerlm.records import SYSTEM_PROMPT
    from megatron_align.demo.world import random_targets, steering_prompts
    from megatron_align.generation.steering import encode_labels

    rng = random.Random(f"steerlm2-demo-targets-{cfg.seed}")
    rows = []
    for q in steering_prompts(cfg.num_prompts, cfg.seed + 41):  # a stream the other demos do not use
        rows.append({"system": SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT", "conversations": [
            {"from": "User", "value": q, "label": None},
            {"from": "Assistant", "value": "", "label": encode_labels(random_targets(rng))}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _evaluate(cfg, checkpoint: str, questions: list) -> dict:
    """Steering sweep of ``checkpoint``: per attribute the MAE |requested - measured| and the Spearman."""
    from megatron_align.demo.steerlm.evaluate import steering_requests, summarize
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.steering import steer_sampling
    from megatron_align.generation.text import clean_response, generate_local

    e = cfg.evaluation
    requests = steering_requests(questions, e.attributes)
    params = steer_sampling(e.tokens_to_generate)
    backend = load_backend(checkpoint, str(cfg.trainer.precision), e.max_batch_size)
    try:
        answers = [clean_response(a, params.end_strings) for a in
                   generate_local(backend, [r.prompt for r in requests], params)]
    finally:
        backend.close()
    results, _ = summarize(requests, answers)
    out = {name: {"mae": statistics.mean(abs(a - b) for a, b in zip(r.requested, r.measured)),
                  "spearman": r.spearman} for name, r in results.items()}
    out["overall"] = {"mae": statistics.mean(v["mae"] for v in out.values()), "spearman": None}
    return out


def table(evaluation: dict) -> str:
    names = list(evaluation)
    lines = ["| attribute | " + " | ".join(f"MAE {n}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for attr in evaluation[names[0]]:
        lines.append(f"| {attr} | " + " | ".join(f"{evaluation[n][attr]['mae']:.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot(evaluation: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evaluation)
    attrs = list(evaluation[names[0]])
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(attrs)), 4.0))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([a + i * width for a in range(len(attrs))], [evaluation[n][x]["mae"] for x in attrs],
               width, label=n)
    ax.set_xticks([a + 0.4 - width / 2 for a in range(len(attrs))])
    ax.set_xticklabels(attrs, rotation=30, ha="right")
    ax.set_ylabel("MAE |requested - measured|")
    ax.set_title("SteerLM 2.0 demo: steering error before and after each round")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_steerlm2_demo(cfg) -> dict:
    """Run every stage (module docstring); returns the results (also ``results.json``)."""
    from megatron_align.algorithms.steerlm2_rounds import run_rounds
    from megatron_align.config.sampling import SamplingParams
    from megatron_align.config.schema import run_dir_of
    from megatron_align.config.stages.steerlm import END_STRING
    from megatron_align.config.stages.steerlm2 import BuildSteerLM2Config, RoundsSteerLM2Config
    from megatron_align.demo.world import steering_prompts
    from megatron_align.distributed import start

    t0 = time.perf_counter()
    cfg = cfg.resolve()
    start(1, 1, seed=cfg.seed)
    steerlm = _steerlm_run(cfg)
    stages = steerlm["stages"]
    policy, sft, rm = (stages[k]["checkpoint"] for k in ("bootstrap", "base_model", "reward_model"))
    run = run_dir_of(cfg, default_exp_dir="runs")
    run.mkdir(parents=True, exist_ok=True)
    _chats(cfg, run / "chats.jsonl")
    precision = str(cfg.trainer.precision)
    build = BuildSteerLM2Config(
        input=str(run / "chats.jsonl"), policy_checkpoint=policy, sft_checkpoint=sft, rm_checkpoint=rm,
        num_responses=cfg.num_responses, likelihood_sigma=cfg.likelihood_sigma, precision=precision,
        sample=SamplingParams(temperature=cfg.temperature, top_k=0, top_p=0.0,
                              tokens_to_generate=cfg.tokens_to_generate, end_strings=[END_STRING],
                              random_seed=cfg.seed))
    rows = cfg.global_batch_size * cfg.num_responses
    train = [f"trainer.precision={precision}", f"trainer.sft.max_steps={cfg.max_steps}",
             "trainer.sft.max_epochs=1000", f"trainer.sft.save_interval={cfg.max_steps}",
             f"model.data.train_ds.global_batch_size={cfg.global_batch_size}",
             f"model.data.train_ds.micro_batch_size={cfg.global_batch_size}",
             "model.data.train_ds.max_seq_length=192", f"model.steerlm2.micro_batch_size={rows}",
             f"model.steerlm2.forward_micro_batch_size={rows}", f"model.optim.lr={cfg.lr!r}",
             "model.optim.sched.name=Constant", "model.optim.sched.warmup_steps=0",
             "model.optim.name=adamw", "exp_manager.create_tensorboard_logger=False",
             "exp_manager.resume_if_exists=True"]
    rounds = RoundsSteerLM2Config(output_dir=str(run / "rounds"), rounds=cfg.rounds, build=build)
    summaries = run_rounds(rounds, train)
    questions = steering_prompts(cfg.evaluation.num_prompts, cfg.seed)  # the SteerLM demo's sweep questions
    evaluation = {"start": _evaluate(cfg, policy, questions)}
    for s in summaries:
        evaluation[f"round {s['round']}"] = _evaluate(cfg, s["checkpoint"], questions)
    results = {"config": {"size": cfg.size, "precision": precision}, "steerlm_run_dir": cfg.steerlm_run_dir,
               "rounds": summaries, "evaluation": evaluation, "table": table(evaluation),
               "run_dir": str(run), "wall_seconds": round(time.perf_counter() - t0, 1)}
    (run / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (run / "table.md").write_text(results["table"])
    plot(evaluation, run / "mae.png")
    return results
