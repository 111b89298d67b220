"""Time of one training step (forward + backward + optimizer) of megatron-core GPT models on this machine.

Prints a Markdown table row per size: tokens per step, median step time, tokens/s, peak RSS. On CPU the
models run through megatron_align's CPU compatibility layer; the same script runs unchanged on a GPU.

    python benchmarks/train_step.py                 # default sizes
    python benchmarks/train_step.py --steps 10 --sizes 2x128x4096x128x4
Size: layers x hidden x vocab x seq x batch.
"""

import argparse
import resource
import statistics
import time


def bench(size: str, steps: int) -> dict:
    import torch

    from megatron_align.config.model import ModelConfig, OptimConfig
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.training.schedule import forward_backward
    from megatron_align.training.setup import prepare_for_training

    layers, hidden, vocab, seq, batch = (int(x) for x in size.split("x"))
    cfg = ModelConfig(num_layers=layers, hidden_size=hidden, ffn_hidden_size=hidden * 4,
                      num_attention_heads=max(1, hidden // 64), vocab_size=vocab, max_position_embeddings=seq,
                      encoder_seq_length=seq, optim=OptimConfig(name="adamw", lr=1e-4))
    model = build_gpt_model(cfg)
    ddp, opt = prepare_for_training(model, cfg.optim, "32")
    tok = torch.randint(0, vocab, (batch, seq))
    mb = {"tokens": tok, "labels": tok.roll(-1, 1), "loss_mask": torch.ones(batch, seq),
          "position_ids": torch.arange(seq).expand(batch, -1).contiguous()}
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        ddp.zero_grad_buffer()
        opt.zero_grad()
        forward_backward([ddp], [mb], 1, seq, batch)
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"size": size, "tokens": batch * seq, "step_ms": med * 1000, "tok_s": batch * seq / med,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="*", default=["2x128x4096x128x4", "4x256x8192x256x8"])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()

    from megatron_align.distributed import start

    start(1, 1, seed=1)
    print("| layers x hidden x vocab x seq x batch | tokens/step | step (ms, median) | tokens/s "
          "| peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        r = bench(size, args.steps)
        print(f"| {r['size']} | {r['tokens']} | {r['step_ms']:.0f} | {r['tok_s']:.0f} | {r['rss_mib']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
