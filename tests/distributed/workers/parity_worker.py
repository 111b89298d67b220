"""Multi-rank equivalence worker: loads checkpoints at the requested layout and compares with references.

Run by tests under torchrun or with srun-style SLURM_* variables. Usage:
    parity_worker.py --tp 2 --pp 1 --spec spec.json
spec.json: {"cases": [{"ckpt", "kind": "gpt"|"reward", "mode": "logits"|"rewards"|"loss"|"grads",
                        "tokens": file.pt, "ref": file.pt, "atol": float, "save_to": dir (optional),
                        "num_microbatches": int (loss/grads), "sequence_parallel": bool (optional)}]}
At TP > 1 "grads" compares the parameters every TP rank holds whole (norms, row-parallel biases): with
sequence parallelism each rank sees half the tokens, so these are the gradients that need the TP all-reduce.
Every rank writes <spec>.rank<r>.json with its measured differences; a failed comparison exits non-zero.
"""

import argparse
import json
import sys


def _positions(tok):
    import torch

    return torch.arange(tok.shape[1]).unsqueeze(0).expand(tok.shape[0], -1).contiguous()


def _microbatches(tok, n):
    import torch

    labels = torch.roll(tok, -1, dims=1)
    mask = torch.ones_like(tok, dtype=torch.float32)
    mask[:, -1] = 0
    out = []
    for t, lab, m in zip(tok.chunk(n), labels.chunk(n), mask.chunk(n)):
        out.append({"tokens": t, "labels": lab, "loss_mask": m, "position_ids": _positions(t)})
    return out


def run_case(case, tp, pp, result):
    import torch
    from megatron.core import parallel_state as ps

    from megatron_align.models.checkpoint import load_checkpoint, read_model_config, save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reward import build_reward_model
    from megatron_align.training.schedule import forward_backward
    from megatron_align.training.setup import prepare_for_training

    cfg = read_model_config(case["ckpt"])
    cfg.tensor_model_parallel_size = tp
    cfg.pipeline_model_parallel_size = pp
    cfg.sequence_parallel = bool(case.get("sequence_parallel", False))
    if case["kind"] == "reward":
        model = build_reward_model(cfg)
    else:
        model = build_gpt_model(cfg, parallel_output=case["mode"] != "logits")
    load_checkpoint(case["ckpt"], model)
    tok = torch.load(case["tokens"], weights_only=True)
    ref = torch.load(case["ref"], weights_only=True)
    mode, atol = case["mode"], case["atol"]
    diff = None
    if mode in ("logits", "rewards"):
        model.eval()
        with torch.no_grad():
            out = model(tok, _positions(tok), None)
        if mode == "logits":
            out = out[..., : ref.shape[-1]]
        diff = (out - ref).abs().max().item()
    elif mode == "loss":
        model.eval()
        n = case["num_microbatches"]
        with torch.no_grad():
            res = forward_backward([model], _microbatches(tok, n), n, tok.shape[1], tok.shape[0] // n,
                                   forward_only=True)
        if ps.is_pipeline_last_stage():
            loss = res["loss_sum"] / res["num_tokens"]
            diff = abs(loss - float(ref))
            result["loss"] = loss
    elif mode == "grads":
        dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        local = tok.chunk(dp)[dp_rank]
        n = case["num_microbatches"]
        # all-reduce (not the distributed optimizer's reduce-scatter, which leaves each rank only its shard)
        cfg.optim.name = "adamw"
        ddp, _ = prepare_for_training(model, cfg.optim, "32")
        ddp.zero_grad_buffer()
        forward_backward([ddp], _microbatches(local, n), n, local.shape[1], local.shape[0] // n)
        diff, compared = 0.0, []
        for name, p in model.named_parameters():
            if tp > 1 and getattr(p, "tensor_model_parallel", False):
                continue  # a shard: its layout differs from the TP=1 reference's (fused QKV, SwiGLU halves)
            diff = max(diff, (p.main_grad - ref[name]).abs().max().item())
            compared.append(name)
        result["compared"] = compared
    if diff is not None:
        result.setdefault("diffs", {})[f"{case['kind']}:{mode}:{case['ckpt']}"] = diff
        if not diff <= atol:
            result.setdefault("failures", []).append(f"{case['ckpt']} {mode}: max diff {diff:.3e} > {atol}")
    if case.get("save_to"):
        save_checkpoint(case["save_to"], model, cfg)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args()

    from megatron_align.distributed import shutdown, start

    env = start(args.tp, args.pp, seed=1234)
    spec = json.load(open(args.spec))
    result = {"rank": env.rank, "launcher": env.launcher, "world_size": env.world_size}
    for case in spec["cases"]:
        run_case(case, args.tp, args.pp, result)
    with open(f"{args.spec}.rank{env.rank}.json", "w") as f:
        json.dump(result, f)
    print(json.dumps(result), flush=True)
    shutdown()
    sys.exit(1 if result.get("failures") else 0)


if __name__ == "__main__":
    main()
