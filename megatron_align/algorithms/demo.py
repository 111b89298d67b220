"""``megatron-align demo``: a short SFT of a tiny Llama-style model on the built-in chat data, end to end.

What it runs (on CPU in about a minute; unchanged on GPUs and under torchrun/srun at any TP/PP/DP):
1. writes the built-in chats (``megatron_align.data.demo_data``) as NeMo chat JSONL into the run directory;
2. trains a sentencepiece tokenizer with the ``<extra_id_0..2>`` markers on them;
3. builds a megatron-core GPT model from the ``model.*`` section and trains it with answer-only loss in NeMo's
   extra_id chat template, showing a progress bar (rank 0) and writing ``metrics.jsonl``;
4. validates every ``trainer.sft.val_check_interval`` steps, saves a checkpoint (weights + config + tokenizer)
   at the end, and answers one held-out question greedily.
Until the SteerLM issue lands this is the README's first command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_align.config import ModelConfig, RunConfig, TrainerConfig, check_batch_sizes
from megatron_align.config.model import OptimConfig, OptimSchedConfig

logger = logging.getLogger(__name__)


@dataclass
class DemoSFTSection:
    """``trainer.sft.*`` for the demo."""

    max_steps: int = 300
    """Optimizer steps."""
    val_check_interval: int = 50
    """Validate every this many steps."""
    limit_val_batches: int = 4
    """Validation micro-batches per validation."""
    num_train_samples: int = 512
    """Built-in training chats to generate."""
    num_val_samples: int = 64
    """Built-in validation chats to generate (a different seed)."""
    tokenizer_vocab_size: int = 1000
    """Vocabulary of the sentencepiece tokenizer trained on the built-in data."""


@dataclass
class DemoTrainerConfig(TrainerConfig):
    """``trainer.*`` for the demo (fp32 by default: the CPU has no fast bf16 matmul)."""

    precision: int | str = "32"
    """32, bf16 or 16."""
    sft: DemoSFTSection = field(default_factory=DemoSFTSection)
    """Step, validation and data sizes."""


@dataclass
class DemoModelConfig(ModelConfig):
    """A tiny Llama-style model (RMSNorm, SwiGLU, RoPE, GQA) that trains in a minute on 2 CPU cores."""

    num_layers: int = 2
    hidden_size: int = 96
    ffn_hidden_size: int = 256
    num_attention_heads: int = 4
    num_query_groups: int | None = 2
    encoder_seq_length: int = 96
    max_position_embeddings: int = 96
    make_vocab_size_divisible_by: int = 64
    micro_batch_size: int = 8
    global_batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="distributed_fused_adam", lr=3e-3, weight_decay=0.01, betas=[0.9, 0.98],
        sched=OptimSchedConfig(name="CosineAnnealing", warmup_steps=5, min_lr=3e-4)))


@dataclass
class DemoConfig(RunConfig):
    """Top-level schema of ``megatron-align demo``."""

    name: str = "megatron_align_demo"
    trainer: DemoTrainerConfig = field(default_factory=DemoTrainerConfig)
    model: DemoModelConfig = field(default_factory=DemoModelConfig)

    def validate(self, world_size: int) -> None:
        tp, pp = self.model.tensor_model_parallel_size, self.model.pipeline_model_parallel_size
        check_batch_sizes(self.model.global_batch_size, self.model.micro_batch_size, world_size // (tp * pp))


def _batches(samples, indices, seq_len, pad_id):
    """Right-padded micro-batch dict (tokens, labels, loss_mask, position_ids) from sample indices."""
    from megatron_align.data import collate

    return collate([samples[i] for i in indices], pad_id, seq_length=seq_len).to_dict()


def _prepare_data(cfg: DemoConfig, run_dir: Path):
    from megatron_align.data.demo_data import demo_records
    from megatron_align.tokenizers import train_sentencepiece

    sft = cfg.trainer.sft
    train, val = demo_records(sft.num_train_samples, seed=1), demo_records(sft.num_val_samples, seed=2)
    for name, recs in (("train.jsonl", train), ("val.jsonl", val)):
        with open(run_dir / name, "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
    texts = [f"{r['system']}\n" + "\n".join(t["value"] for t in r["conversations"]) for r in train]
    texts += ["System", "User", "Assistant"]
    train_sentencepiece(texts, run_dir / "tokenizer", vocab_size=sft.tokenizer_vocab_size)


def _encode(path: Path, tokenizer, seq_len: int):
    """Every sample of a chat JSONL file in NeMo's extra_id template (over-length ones dropped, counted)."""
    from megatron_align.data import SampleRules, SFTFile

    rules = SampleRules(chat=True, max_seq_length=seq_len, truncation_method="drop", add_eos=True)
    data = SFTFile(path, tokenizer, rules, use_index_cache=False)
    samples = data.samples()
    data.report.report(logger)
    return samples


def _greedy_answer(model, tokenizer, question: str, max_new: int = 24) -> str:
    """Greedy continuation by full recompute (TP=1/PP=1 only; the KV-cache engine is the generation issue).

    The prompt is the chat template's generation prompt tokenized whole, as in training; generation stops at
    eos or at the turn-start marker that closes an answer.
    """
    from megatron_align.config.data import ChatPromptTokens
    from megatron_align.data import Turn, chat_prompt
    from megatron_align.data.demo_data import SYSTEM

    ids = tokenizer.text_to_ids(chat_prompt(SYSTEM, [Turn("User", question)]))
    stop = {tokenizer.eos_id, tokenizer.token_to_id(ChatPromptTokens().turn_start)}
    out = []
    model.eval()
    with torch.no_grad():
        for _ in range(max_new):
            t = torch.tensor([ids + out])
            pos = torch.arange(t.shape[1]).unsqueeze(0)
            nxt = int(model(t, pos, None)[0, -1, : tokenizer.vocab_size].argmax())
            if nxt in stop:
                break
            out.append(nxt)
    model.train()
    return tokenizer.ids_to_text(out).strip()


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns a summary dict (also written to ``summary.json``)."""
    from megatron.core import parallel_state as ps
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from tqdm import tqdm

    from megatron_align.distributed import start
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.tokenizers import load_tokenizer_from_dir
    from megatron_align.training.schedule import forward_backward
    from megatron_align.training.setup import prepare_for_training

    m = cfg.model
    env = start(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    run_dir = Path(cfg.exp_manager.explicit_log_dir or Path(cfg.exp_manager.exp_dir or "runs") / cfg.name)
    is_rank0 = env.rank == 0
    if is_rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _prepare_data(cfg, run_dir)
    torch.distributed.barrier()
    tokenizer = load_tokenizer_from_dir(run_dir / "tokenizer")
    seq_len = m.encoder_seq_length
    train = _encode(run_dir / "train.jsonl", tokenizer, seq_len)
    val = _encode(run_dir / "val.jsonl", tokenizer, seq_len)
    model_cfg = dataclasses.replace(m, vocab_size=tokenizer.vocab_size,
                                    tokenizer=dataclasses.replace(m.tokenizer, library=tokenizer.library))
    model = build_gpt_model(model_cfg, precision=cfg.trainer.precision)
    ddp, optimizer = prepare_for_training(model, m.optim, cfg.trainer.precision)
    sft = cfg.trainer.sft
    sched = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=m.optim.lr, min_lr=m.optim.sched.min_lr,
        lr_warmup_steps=m.optim.sched.warmup_steps, lr_decay_steps=m.optim.sched.max_steps or sft.max_steps,
        lr_decay_style="cosine" if m.optim.sched.name == "CosineAnnealing" else "constant",
        start_wd=m.optim.weight_decay, end_wd=m.optim.weight_decay, wd_incr_steps=sft.max_steps,
        wd_incr_style="constant",
    )
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    mbs = m.micro_batch_size
    n_mb = m.global_batch_size // (mbs * dp)
    rng = random.Random(m.seed)
    order: list[int] = []

    def reduce(res):
        t = torch.tensor([res["loss_sum"], res["num_tokens"]], dtype=torch.float64)
        torch.distributed.all_reduce(t)  # non-last PP stages contribute zeros
        return float(t[0] / t[1].clamp(min=1)), float(t[1])

    def validate():
        ddp.eval()
        per_rank = mbs * sft.limit_val_batches
        idx = list(range(dp_rank * per_rank, (dp_rank + 1) * per_rank))
        idx = [i % len(val) for i in idx]
        mbs_list = [_batches(val, idx[i:i + mbs], seq_len, tokenizer.pad_id) for i in range(0, len(idx), mbs)]
        with torch.no_grad():
            res = forward_backward([ddp], mbs_list, len(mbs_list), seq_len, mbs, forward_only=True)
        ddp.train()
        return reduce(res)[0]

    metrics_path = run_dir / "metrics.jsonl"
    metrics = open(metrics_path, "w") if is_rank0 else None
    val_losses = [validate()]
    first_loss = last_loss = None
    bar = tqdm(total=sft.max_steps, desc="demo sft", disable=not is_rank0, dynamic_ncols=True)
    t0 = time.perf_counter()
    tokens_seen = 0
    for step in range(1, sft.max_steps + 1):
        need = m.global_batch_size
        while len(order) < need:
            perm = list(range(len(train)))
            rng.shuffle(perm)
            order.extend(perm)
        batch_idx, order = order[:need], order[need:]
        mine = batch_idx[dp_rank * mbs * n_mb:(dp_rank + 1) * mbs * n_mb]
        mb_list = [_batches(train, mine[i:i + mbs], seq_len, tokenizer.pad_id)
                   for i in range(0, len(mine), mbs)]
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        res = forward_backward([ddp], mb_list, n_mb, seq_len, mbs)
        ok, grad_norm, _ = optimizer.step()
        sched.step(1)
        loss, ntok = reduce(res)
        tokens_seen += ntok
        first_loss = loss if first_loss is None else first_loss
        last_loss = loss
        lr = optimizer.param_groups[0]["lr"]
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm or 0.0),
                  "tokens_per_s": tokens_seen / (time.perf_counter() - t0)}
        if step % sft.val_check_interval == 0 or step == sft.max_steps:
            record["val_loss"] = validate()
            val_losses.append(record["val_loss"])
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update(1)
        if not math.isfinite(loss):
            raise RuntimeError(f"loss became {loss} at step {step}")
    bar.close()
    ckpt = save_checkpoint(run_dir / "checkpoints" / f"step={sft.max_steps}", model, model_cfg,
                           tokenizer_dir=run_dir / "tokenizer", train_state={"step": sft.max_steps})
    summary = {"run_dir": str(run_dir), "checkpoint": str(ckpt), "first_train_loss": first_loss,
               "last_train_loss": last_loss, "val_loss_before": val_losses[0],
               "val_loss_after": val_losses[-1], "steps": sft.max_steps, "seconds": time.perf_counter() - t0}
    if m.tensor_model_parallel_size == 1 and m.pipeline_model_parallel_size == 1:
        summary["sample_question"] = "What is 3 plus 4?"
        summary["sample_answer"] = _greedy_answer(model, tokenizer, summary["sample_question"])
    if is_rank0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        metrics.close()
    if not summary["val_loss_after"] < summary["val_loss_before"]:
        raise RuntimeError("the demo did not learn (validation loss did not fall): check model.optim.lr")
    return summary
