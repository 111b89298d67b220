"""One SFT training step (forward + backward + optimizer) of megatron_align, side by side with the same model
trained by Hugging Face transformers and a plain torch loop.

Methods, each timed in its own fresh subprocess (so that peak memory and warm-up are not shared):
- ``megatron_align``: ``build_gpt_model`` (megatron-core ``GPTModel``, local layer spec) +
  ``prepare_for_training`` (megatron DDP + megatron optimizer, ``model.optim.name=adamw``; ``--optim
  distributed_fused_adam`` for SFT's default, the distributed optimizer) +
  ``training.schedule.forward_backward`` + ``optimizer.step()``; on CPU through ``distributed.start()``, i.e.
  the CPU compatibility layer and the CPU malloc setting (``distributed/cpu_malloc.py``);
- ``hf``: ``transformers.LlamaForCausalLM`` (its default attention, SDPA), ``torch.optim.AdamW`` (defaults),
  ``F.cross_entropy``, ``loss.backward()``, ``clip_grad_norm_``, ``optimizer.step()``: the plain loop;
- ``hf+malloc``: the same HF loop with the malloc setting that megatron_align makes, to show how much of the
  difference is the allocator and how much the framework.

The math is the same for all: a Llama architecture (RMSNorm, SwiGLU with Llama's intermediate size
``multiple_of(8/3 * hidden, 16)``, RoPE, untied embeddings, heads of 64 channels), fp32, the vocabulary
exactly as given (no padding), mean cross entropy over all ``batch x seq`` tokens, AdamW (lr 1e-4, betas
0.9/0.98, eps 1e-8, no weight decay), gradient clipping to norm 1.0. Both start from the same weights
(megatron_align imports the seeded HF model's), so the printed losses of the first and last step must agree.

Prints a Markdown table: tokens per step, median step time, tokens/s, peak RSS growth over the process's
size after imports (model + activations + gradients + optimizer state), and megatron_align's speed relative
to each.
The default run (3 interleaved runs of each method, 2 warm-up + 6 timed steps each) takes about 2 minutes on
2 cores.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --repeats 1 --sizes 2x128x4096x128x4 4x256x8000x256x8
Size: layers x hidden x vocab x seq x batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_LR, _BETAS, _EPS, _CLIP = 1e-4, (0.9, 0.98), 1e-8, 1.0


def _parse(size: str) -> dict:
    layers, hidden, vocab, seq, batch = (int(x) for x in size.split("x"))
    ffn = ((int(8 * hidden / 3) + 15) // 16) * 16  # Llama's intermediate size rule (multiple_of=16)
    return dict(layers=layers, hidden=hidden, vocab=vocab, seq=seq, batch=batch, ffn=ffn,
                heads=max(1, hidden // 64))


def _rss_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark of this process (``clear_refs`` 5) and return the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed: the peak then includes imports
        pass
    return _rss_kib("VmRSS")


def _batch(s: dict):
    import torch

    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=g)
    return tok, tok.roll(-1, 1)  # labels: every position has a target (loss over all tokens)


def _hf_model(s: dict):
    """The HF Llama both sides start from (seeded): HF trains it, megatron_align imports its weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["heads"], max_position_embeddings=s["seq"], rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, attention_dropout=0.0,
                      initializer_range=0.02, use_cache=False)
    return LlamaForCausalLM(cfg).float().train()


def _ours(s: dict, optim: str = "adamw"):
    """Build megatron_align's model (weights imported from the seeded HF model) + optimizer; return a
    function that runs one training step."""
    import torch

    from megatron_align.config.model import ModelConfig, OptimConfig
    from megatron_align.distributed import start
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.hf.convert import _load_into, hf_to_megatron_state
    from megatron_align.training.schedule import forward_backward
    from megatron_align.training.setup import prepare_for_training

    start(1, 1, seed=1)
    cfg = ModelConfig(num_layers=s["layers"], hidden_size=s["hidden"], ffn_hidden_size=s["ffn"],
                      num_attention_heads=s["heads"], vocab_size=s["vocab"], make_vocab_size_divisible_by=1,
                      max_position_embeddings=s["seq"], encoder_seq_length=s["seq"],
                      optim=OptimConfig(name=optim, lr=_LR, betas=list(_BETAS), eps=_EPS, weight_decay=0.0))
    model = build_gpt_model(cfg)
    hf = _hf_model(s)
    _load_into(model, hf_to_megatron_state(hf.state_dict(), cfg, "llama"))
    del hf
    ddp, opt = prepare_for_training(model, cfg.optim, "32", clip_grad=_CLIP)
    tok, labels = _batch(s)
    b, n = s["batch"], s["seq"]
    mb = {"tokens": tok, "labels": labels, "loss_mask": torch.ones(b, n),
          "position_ids": torch.arange(n).expand(b, -1).contiguous()}

    def step():
        ddp.zero_grad_buffer()
        opt.zero_grad()
        out = forward_backward([ddp], [mb], 1, n, b)
        opt.step()
        return out["loss_sum"] / out["num_tokens"]

    return step, sum(p.numel() for p in ddp.parameters())


def _hf(s: dict):
    """The same model in HF transformers + torch AdamW; returns a function that runs one training step."""
    import torch
    import torch.nn.functional as F

    model = _hf_model(s)
    opt = torch.optim.AdamW(model.parameters(), lr=_LR, betas=_BETAS, eps=_EPS, weight_decay=0.0)
    tok, labels = _batch(s)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=tok, use_cache=False).logits  # [B, S, V]
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), _CLIP)
        opt.step()
        return loss.item()

    return step, sum(p.numel() for p in model.parameters())


def worker(method: str, size: str, steps: int, warmup: int, optim: str) -> dict:
    """Measure one method at one size in this (fresh) process; returns the figures as a dict."""
    import megatron.core  # noqa: F401 - imports count as the process's base size, not as training memory
    import torch
    import transformers  # noqa: F401

    if method == "hf+malloc":  # the HF loop with the glibc setting that megatron_align's start() makes on CPU
        from megatron_align.distributed.cpu_malloc import tune_cpu_malloc

        tune_cpu_malloc()
    s = _parse(size)
    base_kib = _reset_peak_rss()
    step, n_params = _ours(s, optim) if method == "megatron_align" else _hf(s)
    losses, times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"method": method, "size": size, "params": n_params, "tokens": s["batch"] * s["seq"],
            "step_s": med, "peak_mib": (_rss_kib("VmHWM") - base_kib) / 1024,
            "threads": torch.get_num_threads(), "loss_first": losses[0], "loss_last": losses[-1]}


def _run_worker(method: str, size: str, steps: int, warmup: int, optim: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--sizes", size,
           "--steps", str(steps), "--warmup", str(warmup), "--optim", optim]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(size: str, methods: list[str], steps: int, warmup: int, repeats: int, optim: str) -> dict:
    """Each method ``repeats`` times, interleaved (ours, hf, ... , ours, hf, ...) so that load from other
    processes falls on all of them alike; per method the median over repeats of each run's median step."""
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            runs[m].append(_run_worker(m, size, steps, warmup, optim))
    out = {}
    for m, rs in runs.items():
        step_s = statistics.median(r["step_s"] for r in rs)
        out[m] = {**rs[0], "step_s": step_s, "tok_s": rs[0]["tokens"] / step_s,
                  "peak_mib": statistics.median(r["peak_mib"] for r in rs),
                  "runs_ms": [round(r["step_s"] * 1000) for r in rs]}
    return out


_METHODS = ["megatron_align", "hf", "hf+malloc"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="*", default=["4x256x8000x256x8"])
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (median taken)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="fresh-process runs per method, interleaved")
    p.add_argument("--methods", nargs="*", default=_METHODS, choices=_METHODS)
    p.add_argument("--optim", default="adamw", choices=["adamw", "distributed_fused_adam"],
                   help="megatron_align's model.optim.name: adamw (unsharded, as the HF loop) or "
                        "distributed_fused_adam (megatron's distributed optimizer, SFT's default)")
    p.add_argument("--worker", choices=_METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], args.steps, args.warmup, args.optim)), flush=True)
        return

    print("| layers x hidden x vocab x seq x batch | method | params | tokens/step | step (ms, median) "
          "| runs (ms) | tokens/s | peak RSS growth (MiB) | loss first -> last | megatron_align / this |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        res = measure(size, args.methods, args.steps, args.warmup, args.repeats, args.optim)
        ours = res.get("megatron_align")
        for m, r in res.items():
            ratio = f"{ours['tok_s'] / r['tok_s']:.2f}x" if ours and m != "megatron_align" else ""
            print(f"| {size} | {m} | {r['params'] / 1e6:.2f}M | {r['tokens']} | {r['step_s'] * 1000:.0f} "
                  f"| {', '.join(map(str, r['runs_ms']))} | {r['tok_s']:.0f} | {r['peak_mib']:.0f} "
                  f"| {r['loss_first']:.4f} -> {r['loss_last']:.4f} | {ratio} |", flush=True)
    print(f"\n(torch threads per process: {r['threads']}; per run {args.warmup} warm-up + {args.steps} timed "
          f"steps in a fresh process; {args.repeats} runs per method, interleaved; median of run medians; "
          f"megatron_align optimizer: {args.optim})")


if __name__ == "__main__":
    main()
