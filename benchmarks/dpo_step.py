"""A DPO training step of megatron_align against TRL's ``DPOTrainer``: same model, data, precision, one run.

Both trainers run as they are used, each in its own fresh process, on the same files:
- ``megatron_align``: ``examples/nlp/gpt/train_gpt_dpo.py`` (megatron-core GPTModel, local spec, megatron DDP
  and optimizer with ``model.optim.name=adamw``, the reference swapped in from host memory each step and run
  over the step's micro-batches), from the seeded HF model imported with ``megatron-align convert --from-hf``;
- ``trl``: ``trl.DPOTrainer`` with ``ref_model=None`` (its own frozen copy, forward each step;
  ``precompute_ref_log_probs=False``), loss ``sigmoid``, from the same HF directory. TRL runs in its own
  environment (``--trl-python``, default ``.venv-trl/bin/python``: ``pip install torch==2.13.0 trl``).

Identical for both: Llama 4 layers x hidden 256 (SwiGLU 688, RoPE, 4 heads, untied), vocab 8000, fp32; 8
pairs per step (16 sequences in one forward), prompt 64 tokens, each response 191 tokens + eos (rows of 256,
no padding), beta 0.1, summed log-probs, AdamW lr 1e-6 (betas 0.9/0.999, eps 1e-8, no weight decay), clipping
to norm 1.0, no warm-up, constant schedule. The data are random words of a word-level tokenizer
(``w0 .. w7996``), so both tokenize to the same ids.

Throughput: steps after the warm-up only. megatron_align's ``metrics.jsonl`` logs the cumulative
``tokens_per_s`` of training-step time; the steady rate is taken between the end of warm-up and the end. TRL
is timed by a callback from ``on_step_begin`` to ``on_step_end`` (collation, reference forward, policy
forward/backward, optimizer). Peak memory: the process's peak RSS (``ru_maxrss``), imports included.

    python benchmarks/dpo_step.py                      # 3 runs of each, interleaved (about 4 minutes)
    python benchmarks/dpo_step.py --repeats 1 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, FFN, HEADS, VOCAB = 4, 256, 688, 4, 8000
PROMPT, RESPONSE, PAIRS = 64, 191, 8
LR, BETA = 1e-6, 0.1
TOKENS_PER_STEP = 2 * PAIRS * (PROMPT + RESPONSE + 1)


def make_inputs(d: Path, n_pairs: int) -> None:
    """The seeded HF model + word-level tokenizer (``d/hf``) and the pairs (``d/pairs.jsonl``)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=HEADS, max_position_embeddings=512, rms_norm_eps=1e-5,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(d / "hf"))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                         pad_token="<pad>", unk_token="<pad>").save_pretrained(str(d / "hf"))
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(VOCAB - 3)}" for _ in range(n))

    with open(d / "pairs.jsonl", "w") as f:
        for _ in range(n_pairs):
            f.write(json.dumps({"prompt": words(PROMPT), "chosen_response": " " + words(RESPONSE),
                                "rejected_response": " " + words(RESPONSE)}) + "\n")


PEAK_WRAPPER = ("import atexit, resource, runpy, sys; atexit.register(lambda: print('PEAK_RSS_KIB', "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def run_ours(d: Path, steps: int, warmup: int) -> dict:
    ckpt = d / "ckpt"
    if not (ckpt / "model_config.yaml").is_file():
        subprocess.run([sys.executable, "-m", "megatron_align.cli", "convert", "--from-hf", str(d / "hf"),
                        "--out", str(ckpt)], check=True, capture_output=True)
    run = Path(tempfile.mkdtemp(dir=d, prefix="ours_"))
    pairs = d / "pairs.jsonl"
    cmd = [sys.executable, "-c", PEAK_WRAPPER, str(ROOT / "examples" / "nlp" / "gpt" / "train_gpt_dpo.py"),
           f"pretrained_checkpoint.restore_from_path={ckpt}", "trainer.precision=32",
           f"model.data.data_prefix={{train: [{pairs}], validation: [{pairs}], test: [{pairs}]}}",
           "model.data.seq_length=512", "model.data.append_eod=True",
           "model.data.pad_length_to_multiple_of=1",
           f"model.global_batch_size={PAIRS}", f"model.micro_batch_size={PAIRS}",
           f"model.dpo.ref_policy_kl_penalty={BETA}", "model.optim.name=adamw", f"model.optim.lr={LR}",
           "model.optim.betas=[0.9,0.999]", "model.optim.eps=1e-8", "model.optim.weight_decay=0.0",
           "model.optim.sched.name=Constant", "model.optim.sched.warmup_steps=0",
           "trainer.dpo.gradient_clip_val=1.0", f"trainer.dpo.max_steps={warmup + steps}",
           "trainer.dpo.val_check_interval=100000", "trainer.dpo.limit_val_batches=1",
           "trainer.dpo.save_interval=100000", "exp_manager.create_tensorboard_logger=False",
           f"exp_manager.explicit_log_dir={run}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    peak = float(proc.stderr.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0]) / 1024
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    # cumulative train time after step k = k * tokens_per_step / tokens_per_s(k)
    t_w = warmup * TOKENS_PER_STEP / rows[warmup - 1]["tokens_per_s"]
    t_end = len(rows) * TOKENS_PER_STEP / rows[-1]["tokens_per_s"]
    step_s = (t_end - t_w) / steps
    return {"step_s": step_s, "peak_mib": peak, "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "wall_s": time.time() - t0}


TRL_WORKER = r'''
import json, sys, time, resource
import torch, transformers
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
d, steps, warmup, lr, beta, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5]), int(sys.argv[6])
torch.manual_seed(0)
rows = [json.loads(x) for x in open(f"{d}/pairs.jsonl")]
ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen_response"],
                         "rejected": r["rejected_response"]} for r in rows])
model = transformers.AutoModelForCausalLM.from_pretrained(f"{d}/hf", dtype=torch.float32)
tok = transformers.AutoTokenizer.from_pretrained(f"{d}/hf")
times, losses = [], []
class Timer(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter() - self.t)
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            losses.append(logs["loss"])
args = DPOConfig(output_dir=f"{d}/trl_out", per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
                 max_steps=steps + warmup, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
                 weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
                 beta=beta, loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=False,
                 logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no", use_cpu=True,
                 dataloader_num_workers=0, seed=0, disable_tqdm=True)
trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=ds, processing_class=tok,
                     callbacks=[Timer()])
trainer.train()
print(json.dumps({"times": times, "losses": losses, "threads": torch.get_num_threads(),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_trl(d: Path, steps: int, warmup: int, python: str) -> dict:
    t0 = time.time()
    proc = subprocess.run([python, "-c", TRL_WORKER, str(d), str(steps), str(warmup), str(LR), str(BETA),
                           str(PAIRS)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"step_s": statistics.mean(out["times"][warmup:]), "peak_mib": out["peak_mib"],
            "loss_first": out["losses"][0], "loss_last": out["losses"][-1], "wall_s": time.time() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="fresh-process runs of each, interleaved")
    p.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
        d = Path(tmp)
        make_inputs(d, PAIRS * (args.steps + args.warmup))
        runs: dict = {"megatron_align": [], "trl": []}
        for _ in range(args.repeats):
            runs["megatron_align"].append(run_ours(d, args.steps, args.warmup))
            runs["trl"].append(run_trl(d, args.steps, args.warmup, args.trl_python))
    print("| method | step (ms, median of runs) | runs (ms) | tokens/s | peak RSS (MiB) | loss first -> last "
          "| megatron_align / this |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    med = {m: statistics.median(r["step_s"] for r in rs) for m, rs in runs.items()}
    for m, rs in runs.items():
        ratio = f"{med['trl'] / med['megatron_align']:.2f}x" if m == "trl" else ""
        print(f"| {m} | {med[m] * 1000:.0f} | {', '.join(str(round(r['step_s'] * 1000)) for r in rs)} "
              f"| {TOKENS_PER_STEP / med[m]:.0f} | {statistics.median(r['peak_mib'] for r in rs):.0f} "
              f"| {rs[0]['loss_first']:.4f} -> {rs[0]['loss_last']:.4f} | {ratio} |")
    print(f"\n({TOKENS_PER_STEP} tokens per step; {args.warmup} warm-up + {args.steps} timed steps per run; "
          f"{args.repeats} runs each, interleaved; torch threads {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
