"""``megatron-align demo``: SteerLM end to end on built-in data, on a CPU in minutes (seed 001's four steps).

Stages (a header per stage and progress bars on rank 0; everything under the run directory):

0. data + tokenizer (``data``): rule-labelled chats stand in for human annotations;
1. base model (``base_model/``): a tiny LM trained on unlabelled chats by the SFT stage;
2. step 1, reward model (``reward_model/``): 9-attribute regression from the base model
   (``run_reward_model``); its held-out MAE per attribute is reported next to the MAE of predicting the
   training mean;
3. step 2, annotation (``data/ac_sft_annotated.jsonl``): the reward model, in this process
   (``scoring.RewardScorer``), relabels fresh chats (``annotate.annotate_batches``): their rule labels are
   replaced by its predictions, as NeMo-Aligner re-annotates OASST / HelpSteer;
4. step 3, attribute-conditioned SFT (``ac_sft/``) from the base model on the annotated chats;
5. step 4, bootstrap (``bootstrap/``): held-out questions answered ``k`` times at ``quality:4`` (the other
   attributes random), the answers annotated by the reward model (``annotated.jsonl``) and the AC-SFT model
   fine-tuned on them, mixed with ``bootstrap.replay`` step-3 chats (``train.jsonl``);
6. steering evaluation (``evaluate``): one attribute's requested value turned 0..4, the others fixed, answers
   measured by the rules; ``results.json``, ``table.md``, ``steering.png``, ``samples.jsonl``.

Every stage runs on all ranks (training, generation and scoring are collective over TP/PP; data-parallel
replicas generate the same answers), and only rank 0 writes files. ``torch.distributed`` and megatron's groups
are started once here; each stage's ``start()`` finds them and reuses them.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch

from megatron_align.config.schema import run_dir_of

logger = logging.getLogger(__name__)

OWNED = ("data", "tokenizer", "base_model", "reward_model", "ac_sft", "bootstrap", "results.json",
         "table.md", "steering.png", "samples.jsonl")
"""What the demo writes in its run directory (removed at the start of a new run)."""
STAGES = 6


class Pipeline:
    """The demo's state between stages (paths, checkpoints, results) and its rank-0 display."""

    stages = STAGES
    """The last stage's number, shown in each header."""

    def __init__(self, cfg, rank: int):
        self.cfg, self.rank0 = cfg, rank == 0
        self.run_dir = run_dir_of(cfg, default_exp_dir="runs")
        self.results: dict = {"config": {"size": cfg.size, "precision": str(cfg.trainer.precision)},
                              "stages": {}}
        self._t = time.perf_counter()

    def header(self, n: int, title: str) -> None:
        self._t = time.perf_counter()
        if self.rank0:
            print(f"\n=== [{n}/{self.stages}] {title} ===", flush=True)

    def done(self, stage: str, **info) -> None:
        info["seconds"] = round(time.perf_counter() - self._t, 1)
        self.results["stages"][stage] = info
        if self.rank0:
            print(f"    {stage} done in {info['seconds']:.0f} s", flush=True)
        gc.collect()

    def bar(self, total: int, desc: str):
        from megatron_align.log import progress_bar

        return progress_bar(total, desc, disable=not self.rank0)

    def write_jsonl(self, path: Path, rows) -> None:
        from megatron_align.data.steerlm.io import write_jsonl

        if self.rank0:
            write_jsonl(path, rows)
        torch.distributed.barrier()


def _precision(cfg) -> str:
    return str(cfg.trainer.precision)


def _val_losses(summary: dict) -> dict:
    """``{step: val_loss}`` of an SFT run's summary."""
    return {step: val["val_loss"] for step, val in summary["val"].items()}


def _checkpoint(summary: dict, stage: str) -> Path:
    if not summary.get("last_checkpoint"):
        raise RuntimeError(f"the {stage} stage saved no checkpoint")
    return Path(summary["last_checkpoint"])


def _clean_run_dir(run_dir: Path) -> None:
    for name in OWNED:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def mean_predictor_mae(train_reg: Path, val_reg: Path) -> dict[str, float]:
    """MAE per attribute on the validation rows of always predicting the training rows' mean label."""
    from megatron_align.data.steerlm.attributes import STEERLM_ATTRIBUTES

    def labels(path):
        return [json.loads(line)["label"] for line in Path(path).read_text().splitlines() if line.strip()]

    train, val = labels(train_reg), labels(val_reg)
    out = {}
    for i, name in enumerate(STEERLM_ATTRIBUTES):
        mean = sum(r[i] for r in train) / len(train)
        out[name] = sum(abs(r[i] - mean) for r in val) / len(val)
    return out


def annotation_mae(annotated: list[dict], truth: list[dict]) -> dict[str, float]:
    """MAE per attribute of the reward model's labels against the rules' labels (labelled turns only)."""
    from megatron_align.data.steerlm.attributes import STEERLM_ATTRIBUTES, decode_label

    err, n = {a: 0.0 for a in STEERLM_ATTRIBUTES}, 0
    for got, ref in zip(annotated, truth):
        for g, r in zip(got["conversations"], ref["conversations"]):
            if r.get("label"):
                pred, true = decode_label(g["label"]), decode_label(r["label"])
                n += 1
                for a in STEERLM_ATTRIBUTES:
                    err[a] += abs(pred[a] - true[a])
    return {a: e / max(n, 1) for a, e in err.items()}


def annotate(p: Pipeline, scorer, records: list[dict], desc: str) -> list[dict]:
    """``records`` relabelled by ``scorer``, with a progress bar: every turn that carries a label gets the
    reward model's instead (NeMo-Aligner's ``attribute_annotate.py`` rule; unlabelled turns stay so)."""
    from megatron_align.data.steerlm.annotate import annotate_batches

    out: list[dict] = []
    bar = p.bar(len(records), desc)
    for batch in annotate_batches(records, scorer.score, p.cfg.annotation.batch_size, turns="labeled"):
        out += batch
        bar.update(len(batch))
    bar.close()
    return out


def generate(p: Pipeline, backend, prompts: list[str], params, desc: str) -> list[tuple[str, bool]]:
    """``(answer, finished)`` per prompt, in batches of the backend's size: the answer without its end
    string; ``finished`` False when the length limit cut it."""
    import dataclasses

    from megatron_align.generation.text import clean_response, generate_local

    longest = max(len(ids) for ids in backend.tokenizer.texts_to_ids(prompts))
    room = backend.max_sequence_length - longest
    if room < 8:
        raise RuntimeError(f"prompts of {longest} tokens leave no room to answer within the model's "
                           f"{backend.max_sequence_length} positions")
    params = dataclasses.replace(params, tokens_to_generate=min(params.tokens_to_generate, room))
    out: list[tuple[str, bool]] = []
    bar = p.bar(len(prompts), desc)
    for lo in range(0, len(prompts), backend.max_batch_size):
        chunk = prompts[lo:lo + backend.max_batch_size]
        for text in generate_local(backend, chunk, params):
            cleaned = clean_response(text, params.end_strings)
            out.append((cleaned, cleaned != text))
        bar.update(len(chunk))
    bar.close()
    return out


def stage_bootstrap_samples(p: Pipeline, policy: Path) -> tuple[list[dict], int]:
    """Step 4a: ``k`` answers per held-out question at quality 4 (other attributes drawn at random), as
    records; answers that are empty or were cut by the length limit are dropped (and counted)."""
    from megatron_align.algorithms.steerlm import (
        generation_prompt,
        max_quality_label,
        sample_record,
        sampling_params,
    )
    from megatron_align.config.stages.steerlm import END_STRING, SampleSection
    from megatron_align.data.steerlm.records import SYSTEM_PROMPT
    from megatron_align.demo.world import random_targets, steering_prompts
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.steering import encode_labels

    b, seed = p.cfg.bootstrap, p.cfg.data.seed
    rng = random.Random(f"steerlm-demo-bootstrap-{seed}")
    questions = steering_prompts(b.num_prompts, seed + 1)  # the evaluation uses ``seed``: disjoint streams
    labels = [max_quality_label(encode_labels(dict(random_targets(rng), quality=4))) for _ in questions]
    section = SampleSection(k=b.samples_per_prompt, temperature=b.temperature, top_k=b.top_k,
                            tokens_to_generate=b.tokens_to_generate, end_strings=[END_STRING],
                            random_seed=seed)
    params = sampling_params(section, seed)
    prompts = [generation_prompt(SYSTEM_PROMPT, [], q, label) for q, label in zip(questions, labels)
               for _ in range(b.samples_per_prompt)]
    backend = load_backend(policy, _precision(p.cfg), b.max_batch_size)
    answers = generate(p, backend, prompts, params, "bootstrap sampling")
    backend.close()
    records = []
    for i, (answer, finished) in enumerate(answers):
        q = i // b.samples_per_prompt
        if finished and answer.strip():
            records.append(sample_record(SYSTEM_PROMPT, [], questions[q], answer, labels[q]))
    if not records:
        logger.warning("every bootstrap sample was empty or unfinished (the attribute-conditioned model does "
                       "not end its answers yet: raise ac_sft.max_steps); fine-tuning on replayed chats only")
    return records, len(answers) - len(records)


def stage_evaluate(p: Pipeline, policy: Path, rm_mae: dict, baseline: dict) -> None:
    """The steering sweep on ``policy``; writes results.json, table.md, steering.png, samples.jsonl."""
    from megatron_align.demo.steerlm.evaluate import (
        plot_steering,
        steering_requests,
        steering_table,
        summarize,
    )
    from megatron_align.demo.world import steering_prompts
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.steering import steer_sampling

    e = p.cfg.evaluation
    questions = steering_prompts(e.num_prompts, p.cfg.data.seed)
    requests = steering_requests(questions, e.attributes)
    backend = load_backend(policy, _precision(p.cfg), e.max_batch_size)
    answers = [a for a, _ in generate(p, backend, [r.prompt for r in requests],
                                      steer_sampling(e.tokens_to_generate), "steering sweep")]
    backend.close()
    results, samples = summarize(requests, answers)
    steering = {a: {"spearman": r.spearman, "mean_by_level": r.mean_by_level(), "requested": r.requested,
                    "measured": r.measured} for a, r in results.items()}
    p.results.update(steering=steering, rm_val_mae=rm_mae, mean_predictor_mae=baseline)
    table = steering_table(results, rm_mae, baseline)
    p.results["table"] = table
    if p.rank0:
        (p.run_dir / "table.md").write_text(table)
        plot_steering(results, p.run_dir / "steering.png", rm_mae)
        with open(p.run_dir / "samples.jsonl", "w") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")


def run_demo(cfg) -> dict:
    """Run every stage (module docstring); returns the results (also ``results.json``)."""
    from megatron_align.algorithms.reward_model import run_reward_model
    from megatron_align.algorithms.sft import run_sft
    from megatron_align.demo.steerlm import stages as st
    from megatron_align.demo.steerlm.data import prepare_demo_data
    from megatron_align.distributed import start
    from megatron_align.scoring.reward_model import RewardScorer

    t_start = time.perf_counter()
    cfg = cfg.resolve()  # trainer.precision=auto made concrete (a no-op after load_config)
    m = cfg.model
    env = start(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    p = Pipeline(cfg, env.rank)
    run, rank0 = p.run_dir, p.rank0

    p.header(0, "data: built-in rule-labelled chats and a sentencepiece tokenizer")
    if rank0:
        run.mkdir(parents=True, exist_ok=True)
        _clean_run_dir(run)
    paths = prepare_demo_data(cfg, run, write=rank0)
    torch.distributed.barrier()
    p.done("data", train=cfg.data.num_train, val=cfg.data.num_val, ac_sft=cfg.data.num_ac_sft)

    p.header(1, f"base model: language model on {cfg.data.num_train} unlabelled chats, "
                f"{cfg.base_model.max_steps} steps")
    summary = run_sft(st.base_model_config(cfg, paths.file("base_train"), paths.file("base_val"),
                                           paths.tokenizer / "tokenizer.model", run / "base_model"))
    base = _checkpoint(summary, "base model")
    p.done("base_model", checkpoint=str(base), val_loss=_val_losses(summary))

    p.header(2, f"SteerLM step 1: regression reward model (9 attributes), {cfg.reward_model.max_steps} steps")
    rm_cfg = st.reward_model_config(cfg, paths.file("train_reg"), paths.file("val_reg"), base,
                                    run / "reward_model")
    summary = run_reward_model(rm_cfg)
    rm = _checkpoint(summary, "reward model")
    last_val = summary["val"][max(summary["val"])]
    rm_mae = {k.removeprefix("val_mae_"): v for k, v in last_val.items() if k.startswith("val_mae_")}
    baseline = mean_predictor_mae(paths.file("train_reg"), paths.file("val_reg"))
    p.done("reward_model", checkpoint=str(rm), val_mae=rm_mae, mean_predictor_mae=baseline)

    p.header(3, f"SteerLM step 2: annotate {cfg.data.num_ac_sft} fresh chats with the reward model")
    scorer = RewardScorer(rm, _precision(cfg), cfg.annotation.micro_batch_size)
    chats = [json.loads(x) for x in paths.file("ac_sft_chats").read_text().splitlines()]
    annotated = annotate(p, scorer, chats, "annotate")
    p.write_jsonl(paths.file("ac_sft_annotated"), annotated)
    p.done("annotation", file=str(paths.file("ac_sft_annotated")),
           mae_vs_rules=annotation_mae(annotated, chats))

    p.header(4, f"SteerLM step 3: attribute-conditioned SFT, {cfg.ac_sft.max_steps} steps")
    summary = run_sft(st.finetune_config(cfg, cfg.ac_sft, paths.file("ac_sft_annotated"), paths.file("val"),
                                         base, run / "ac_sft"))
    ac_sft = _checkpoint(summary, "attribute-conditioned SFT")
    p.done("ac_sft", checkpoint=str(ac_sft), val_loss=_val_losses(summary))

    b = cfg.bootstrap
    p.header(5, f"SteerLM step 4: bootstrap ({b.num_prompts} questions x {b.samples_per_prompt} samples at "
                f"quality:4, annotate, {b.max_steps} fine-tuning steps)")
    samples, dropped = stage_bootstrap_samples(p, ac_sft)
    boot_annotated = annotate(p, scorer, samples, "annotate samples")
    del scorer
    if rank0:
        (run / "bootstrap").mkdir(parents=True, exist_ok=True)
    p.write_jsonl(run / "bootstrap" / "annotated.jsonl", boot_annotated)
    replay_rng = random.Random(f"steerlm-demo-replay-{cfg.data.seed}")
    replay = replay_rng.sample(annotated, min(b.replay, len(annotated)))
    if not boot_annotated + replay:
        raise RuntimeError("nothing to fine-tune on in the bootstrap: no finished samples and "
                           "bootstrap.replay=0")
    boot_file = run / "bootstrap" / "train.jsonl"
    p.write_jsonl(boot_file, boot_annotated + replay)
    summary = run_sft(st.finetune_config(cfg, b, boot_file, paths.file("val"), ac_sft,
                                         run / "bootstrap" / "sft"))
    final = _checkpoint(summary, "bootstrap fine-tuning")
    p.done("bootstrap", checkpoint=str(final), samples=len(samples), dropped=dropped, replayed=len(replay),
           val_loss=_val_losses(summary))

    p.header(6, f"steering evaluation: {len(cfg.evaluation.attributes)} attributes x 5 values x "
                f"{cfg.evaluation.num_prompts} held-out questions")
    stage_evaluate(p, final, rm_mae, baseline)
    p.done("evaluation")

    p.results["run_dir"] = str(run)
    p.results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    if rank0:
        (run / "results.json").write_text(json.dumps(p.results, indent=1, default=_json_default))
    torch.distributed.barrier()
    return p.results


def _json_default(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)
