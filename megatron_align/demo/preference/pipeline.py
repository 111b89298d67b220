"""``megatron-align demo dpo`` / ``demo exo``: preference training end to end on the built-in world, on a CPU.

Stages (a header per stage on rank 0; everything under the run directory):

0. data + tokenizer (``data``, ``tokenizer``): the SteerLM demo's chats (``demo/steerlm/data.py``);
1. SFT model (``sft_model/``): the tiny chat language model on unlabelled chats (the SFT stage); it is the
   starting policy and the reference of every run;
2. samples (``samples/``): ``samples_per_prompt`` answers per training question from the SFT model, each
   scored by the rules (``reward_attributes`` summed, ``demo/world/measure.py``): EXO groups
   ``{prompt, completions, rewards}`` (``groups.json``) and DPO pairs, best against worst
   (``pairs.jsonl``, ties left out);
3. training (``<method>_beta<beta>/``): ``run_dpo`` per method and beta, from the SFT model;
4. evaluation: every policy (the SFT model included) answers held-out questions; per policy the mean rule
   reward and a KL(pi || pi_ref) estimate, the mean over its answers of sum_t log pi(y_t) - log pi_ref(y_t)
   (teacher-forced, both models in this process); ``results.json`` (merged with an earlier run's other
   methods), ``table.md``, ``reward_kl.png``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from pathlib import Path

import torch

from megatron_align.config.stages.dpo import EXO_LOSSES
from megatron_align.demo.steerlm.pipeline import Pipeline, generate

logger = logging.getLogger(__name__)

END = "<extra_id_1>"
STAGES = 4


def _prompt(question: str) -> str:
    from megatron_align.data.nemo_chat import Turn, chat_prompt
    from megatron_align.data.steerlm.records import SYSTEM_PROMPT

    return chat_prompt(SYSTEM_PROMPT, [Turn("User", question)])


def rule_reward(answer: str, prompt: str, attributes: list) -> float:
    """The demo's reward: the sum of the rule-measured ``attributes`` of ``answer``."""
    from megatron_align.demo.world import measure_attributes

    measured = measure_attributes(answer, prompt)
    return float(sum(measured[a] for a in attributes))


def _questions(n: int, seed: int, split: str) -> list[str]:
    from megatron_align.demo.world import steering_prompts

    return steering_prompts(
        n, seed + {"train": 11, "eval": 23}[split]
    )  # streams the SteerLM demo does not use


def _sample(p: Pipeline, checkpoint: Path, prompts: list[str], k: int, desc: str) -> list[str]:
    from megatron_align.config.sampling import SamplingParams
    from megatron_align.generation.build import load_backend

    s = p.cfg.preference
    params = SamplingParams(
        temperature=s.temperature,
        top_k=0,
        top_p=0.0,
        tokens_to_generate=s.tokens_to_generate,
        end_strings=[END],
        random_seed=p.cfg.data.seed,
    )
    backend = load_backend(checkpoint, str(p.cfg.trainer.precision), s.max_batch_size)
    try:
        return [a for a, _ in generate(p, backend, [q for q in prompts for _ in range(k)], params, desc)]
    finally:
        backend.close()


def stage_samples(p: Pipeline, sft: Path) -> dict:
    """Stage 2 (module docstring): ``samples/{groups,val_groups}.json``, ``{pairs,val_pairs}.jsonl``."""
    s = p.cfg.preference
    prompts = [_prompt(q) for q in _questions(s.num_prompts, p.cfg.data.seed, "train")]
    answers = _sample(p, sft, prompts, s.samples_per_prompt, "sampling K answers per question")
    groups, pairs = [], []
    for i, prompt in enumerate(prompts):
        comps = answers[i * s.samples_per_prompt : (i + 1) * s.samples_per_prompt]
        rewards = [rule_reward(a, prompt, s.reward_attributes) for a in comps]
        texts = [a + "\n" + END for a in comps]
        groups.append({"prompt": prompt, "completions": texts, "rewards": rewards})
        best, worst = (
            max(range(len(rewards)), key=rewards.__getitem__),
            min(range(len(rewards)), key=rewards.__getitem__),
        )
        if rewards[best] > rewards[worst]:
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen_response": texts[best],
                    "rejected_response": texts[worst],
                    "chosen_reward": rewards[best],
                    "rejected_reward": rewards[worst],
                }
            )
    n_val = s.global_batch_size
    d = p.run_dir / "samples"
    files = {
        "groups": d / "groups.json",
        "val_groups": d / "val_groups.json",
        "pairs": d / "pairs.jsonl",
        "val_pairs": d / "val_pairs.jsonl",
    }
    if len(pairs) < 2 * n_val:
        raise RuntimeError(
            f"only {len(pairs)} of {len(prompts)} questions have answers of different rewards; "
            "raise preference.num_prompts"
        )
    if p.rank0:
        d.mkdir(parents=True, exist_ok=True)
        files["groups"].write_text(json.dumps(groups[n_val:], indent=1))
        files["val_groups"].write_text(json.dumps(groups[:n_val], indent=1))
        files["pairs"].write_text("".join(json.dumps(x) + "\n" for x in pairs[n_val:]))
        files["val_pairs"].write_text("".join(json.dumps(x) + "\n" for x in pairs[:n_val]))
    torch.distributed.barrier()
    all_rewards = [r for g in groups for r in g["rewards"]]
    return {
        "files": files,
        "pairs": len(pairs),
        "groups": len(groups),
        "sample_reward": statistics.mean(all_rewards),
    }


def dpo_config(p: Pipeline, method: str, beta: float, files: dict, sft: Path, run_dir: Path):
    """The ``train_gpt_dpo.py`` config of one run: ``conf/gpt_dpo.yaml`` + the demo's overrides."""
    from megatron_align.config import load_config
    from megatron_align.config.loader import CONF_DIR
    from megatron_align.config.stages.dpo import DPOConfig
    from megatron_align.demo.steerlm import stages as st

    s = p.cfg.preference
    exo = method in EXO_LOSSES
    train, val = (files["groups"], files["val_groups"]) if exo else (files["pairs"], files["val_pairs"])
    overrides = [
        *st.common(p.cfg, run_dir),
        *st.optimizer(p.cfg, s),
        f"pretrained_checkpoint.restore_from_path={st._value(str(sft))}",
        f"model.data.data_prefix={{train: [{train}], validation: [{val}], test: [{val}]}}",
        f"model.data.seq_length={p.cfg.model.encoder_seq_length}",
        "model.data.overlong=truncate",
        f"model.dpo.preference_loss={method}",
        f"model.dpo.ref_policy_kl_penalty={beta!r}",
        f"model.dpo.num_contrastive={s.samples_per_prompt}",
        f"model.dpo.beta_r={s.beta_r!r}",
        f"model.global_batch_size={s.global_batch_size}",
        f"model.micro_batch_size={s.micro_batch_size}",
        f"trainer.dpo.max_steps={s.max_steps}",
        "trainer.dpo.max_epochs=1000",
        f"trainer.dpo.val_check_interval={s.val_check_interval}",
        f"trainer.dpo.save_interval={s.max_steps}",
        "trainer.dpo.limit_val_batches=1.0",
    ]
    return load_config(DPOConfig, CONF_DIR / "gpt_dpo.yaml", overrides)


def _response_logps(model, tokenizer, vocab: int, texts: list[tuple[str, str]]) -> list[float]:
    """sum_t log p(y_t) over each answer's tokens (prompt + answer tokenized whole, answer tokens marked)."""
    from megatron_align.data.tokenize import Rendered, encode_rendered
    from megatron_align.scoring.forward import token_logprobs_of

    seqs, masks = [], []
    for prompt, answer in texts:
        enc = encode_rendered(
            Rendered(prompt + answer, ((len(prompt), len(prompt) + len(answer)),)), tokenizer
        )
        seqs.append(enc.ids.tolist())
        masks.append(enc.target_mask[1:])
    rows, _ = token_logprobs_of(model, seqs, tokenizer.pad_id, vocab, micro_batch_size=16)
    return [float(sum(lp for lp, m in zip(row, mask) if m)) for row, mask in zip(rows, masks)]


def stage_evaluate(p: Pipeline, policies: dict, sft: Path) -> dict:
    """Stage 4: mean rule reward and KL(pi || pi_ref) estimate of each policy on held-out questions."""
    from megatron_align.generation.build import load_model

    s = p.cfg.preference
    prompts = [_prompt(q) for q in _questions(s.eval_prompts, p.cfg.data.seed, "eval")]
    ref_model, tokenizer, ref_cfg = load_model(sft, "gpt", str(p.cfg.trainer.precision))
    vocab = ref_cfg.vocab_size or tokenizer.vocab_size
    out = {}
    for name, ckpt in policies.items():
        answers = _sample(p, ckpt, prompts, s.eval_samples, f"evaluate {name}")
        pairs = [(prompts[i // s.eval_samples], a + "\n" + END) for i, a in enumerate(answers)]
        rewards = [
            rule_reward(a, prompts[i // s.eval_samples], s.reward_attributes) for i, a in enumerate(answers)
        ]
        ref = _response_logps(ref_model, tokenizer, vocab, pairs)
        if ckpt == sft:
            pol = ref
        else:
            model, _, _ = load_model(ckpt, "gpt", str(p.cfg.trainer.precision))
            pol = _response_logps(model, tokenizer, vocab, pairs)
            del model
        kl = [a - b for a, b in zip(pol, ref)]
        out[name] = {
            "reward": statistics.mean(rewards),
            "reward_se": statistics.stdev(rewards) / math.sqrt(len(rewards)),
            "kl": statistics.mean(kl),
            "kl_se": statistics.stdev(kl) / math.sqrt(len(kl)),
            "samples": [{"prompt": q, "answer": a, "reward": r} for (q, a), r in zip(pairs[:4], rewards)],
        }
    return out


def table(evaluation: dict, training: dict) -> str:
    lines = [
        "| policy | method | beta | rule reward (mean +- se) | KL(pi || pi_ref) estimate | val accuracy | "
        "val margin |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in evaluation.items():
        t = training.get(name, {})
        acc = f"{t['val_accuracy']:.2f}" if "val_accuracy" in t else ""
        margin = f"{t['val_margin']:.2f}" if "val_margin" in t else ""
        lines.append(
            f"| {name} | {t.get('method', 'SFT (reference)')} | {t.get('beta', '')} "
            f"| {e['reward']:.2f} +- {e['reward_se']:.2f} | {e['kl']:.2f} +- {e['kl_se']:.2f} | {acc} | "
            f"{margin} |"
        )
    return "\n".join(lines) + "\n"


def plot(evaluation: dict, training: dict, path: Path) -> None:
    """Rule reward against KL per method, each beta a point, the SFT model at the origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    base = evaluation.get("sft")
    methods = sorted({t["method"] for t in training.values()})
    for method in methods:
        names = sorted(
            (n for n, t in training.items() if t["method"] == method and n in evaluation),
            key=lambda n: training[n]["beta"],
        )
        xs = [evaluation[n]["kl"] for n in names]
        ys = [evaluation[n]["reward"] for n in names]
        ax.errorbar(
            xs, ys, yerr=[evaluation[n]["reward_se"] for n in names], marker="o", capsize=3, label=method
        )
        for n, x, y in zip(names, xs, ys):
            ax.annotate(
                f"beta={training[n]['beta']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    if base:
        ax.scatter(
            [base["kl"]], [base["reward"]], color="black", marker="s", label="SFT (reference)", zorder=3
        )
    ax.set_xlabel("KL(pi || pi_ref) estimate on held-out answers (nats)")
    ax.set_ylabel("rule reward (mean)")
    ax.set_title("Preference demo: reward against KL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_preference_demo(cfg) -> dict:
    """Run every stage (module docstring); returns the results (also ``results.json``)."""
    from megatron_align.algorithms.dpo import run_dpo
    from megatron_align.algorithms.sft import run_sft
    from megatron_align.demo.steerlm import stages as st
    from megatron_align.demo.steerlm.data import prepare_demo_data
    from megatron_align.demo.steerlm.pipeline import _checkpoint
    from megatron_align.distributed import start

    t_start = time.perf_counter()
    cfg = cfg.resolve()
    m, s = cfg.model, cfg.preference
    env = start(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    p = Pipeline(cfg, env.rank)
    p.stages = STAGES
    run, rank0 = p.run_dir, p.rank0
    previous = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}

    p.header(0, "data: the built-in chats and a sentencepiece tokenizer")
    if rank0:
        run.mkdir(parents=True, exist_ok=True)
    sft_done = run / "sft_model" / "done.json"
    paths = prepare_demo_data(cfg, run, write=rank0 and not sft_done.is_file())
    torch.distributed.barrier()
    p.done("data")

    p.header(1, f"SFT model: chat language model, {cfg.base_model.max_steps} steps (the reference)")
    if sft_done.is_file() and Path(json.loads(sft_done.read_text())["checkpoint"]).is_dir():
        sft = Path(json.loads(sft_done.read_text())["checkpoint"])  # reused: demo dpo, then demo exo
    else:
        if rank0:
            shutil.rmtree(run / "sft_model", ignore_errors=True)
        summary = run_sft(
            st.base_model_config(
                cfg,
                paths.file("base_train"),
                paths.file("base_val"),
                paths.tokenizer / "tokenizer.model",
                run / "sft_model",
            )
        )
        sft = _checkpoint(summary, "SFT model")
        if rank0:
            sft_done.write_text(json.dumps({"checkpoint": str(sft)}))
    p.done("sft_model", checkpoint=str(sft))

    p.header(
        2,
        f"samples: {s.num_prompts} questions x {s.samples_per_prompt} answers, rule reward "
        f"{'+'.join(s.reward_attributes)}",
    )
    samples = stage_samples(p, sft)
    p.done("samples", pairs=samples["pairs"], groups=samples["groups"], mean_reward=samples["sample_reward"])

    p.header(
        3, f"training: {', '.join(s.methods)} at beta {', '.join(map(str, s.betas))}, {s.max_steps} steps"
    )
    training = {k: v for k, v in previous.get("training", {}).items() if v["method"] not in s.methods}
    policies = {"sft": sft}
    for name in training:
        if Path(training[name]["checkpoint"]).is_dir():
            policies[name] = Path(training[name]["checkpoint"])
    for method in s.methods:
        for beta in s.betas:
            name = f"{method}_beta{beta:g}"
            summary = run_dpo(dpo_config(p, method, beta, samples["files"], sft, run / name))
            last = summary["val"][max(summary["val"])] if summary["val"] else {}
            training[name] = {
                "method": method,
                "beta": beta,
                "checkpoint": str(_checkpoint(summary, name)),
                "first_loss": summary["losses"][1],
                "last_loss": summary["losses"][max(summary["losses"])],
                **{k: v for k, v in last.items() if k in ("val_loss", "val_accuracy", "val_margin")},
            }
            policies[name] = Path(training[name]["checkpoint"])
    p.done("training", runs=len(training))

    p.header(
        4, f"evaluation: {len(policies)} policies x {s.eval_prompts} held-out questions x {s.eval_samples}"
    )
    evaluation = stage_evaluate(p, policies, sft)
    p.done("evaluation")
    results = {
        "config": {"size": cfg.size, "precision": str(cfg.trainer.precision)},
        "training": training,
        "evaluation": evaluation,
        "stages": p.results["stages"],
        "run_dir": str(run),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    results["table"] = table(evaluation, training)
    if rank0:
        (run / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (run / "table.md").write_text(results["table"])
        plot(evaluation, training, run / "reward_kl.png")
    torch.distributed.barrier()
    return results
