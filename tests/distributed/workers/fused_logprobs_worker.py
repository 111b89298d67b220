"""TP worker for the fused LM-head log-probs (kernels/fused_linear_logprobs.py), run by
tests/distributed/test_fused_logprobs_tp2.py under torchrun with 2 gloo ranks. Usage:
    fused_logprobs_worker.py INPUTS.pt OUT_DIR
INPUTS.pt: {"hidden" [N, H], "weight" [V, H], "bias" [V], "target" [N], "g_lp" [N], "g_ent" [N],
            "cases": [{"name", "dtype", "bias", "temperature", "entropy", "kw"}]}
Each rank keeps its contiguous slice of the weight / bias, calls the op with an explicit process group (no
megatron groups exist), and saves per case log-probs, entropy, the all-reduced hidden gradient and its
weight / bias shard gradients to OUT_DIR/rank<r>.pt. It then makes megatron.core.parallel_state's getters
raise and runs the first case again: the op must not read megatron's global state (nor import megatron).
"""

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton cases run on CPU through the interpreter


def _run_case(inp, case, group, rank, world):
    import torch

    from megatron_align.kernels.fused_linear_logprobs import fused_linear_logprobs

    dtype = getattr(torch, case["dtype"])
    v_local = inp["weight"].shape[0] // world
    rows = slice(rank * v_local, (rank + 1) * v_local)
    hidden = inp["hidden"].to(dtype).requires_grad_()
    weight = inp["weight"][rows].to(dtype).contiguous().requires_grad_()  # [V/tp, H]
    bias = inp["bias"][rows].to(dtype).contiguous().requires_grad_() if case["bias"] else None
    lp, ent = fused_linear_logprobs(hidden, weight, inp["target"], group=group, bias=bias,
                                    temperature=case["temperature"], return_entropy=case["entropy"],
                                    **case["kw"])
    loss = (lp * inp["g_lp"]).sum() + ((ent * inp["g_ent"]).sum() if case["entropy"] else 0.0)
    leaves = [hidden, weight] + ([bias] if bias is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    out = {"logp": lp.detach(), "entropy": None if ent is None else ent.detach(), "grad_hidden": grads[0],
           "grad_weight": grads[1], "grad_bias": grads[2] if bias is not None else None}
    return out


def _forbid_megatron_state():
    """Replace every getter of megatron.core.parallel_state by one that raises; returns how many."""
    from megatron.core import parallel_state as ps

    def _raise(*_a, **_k):
        raise AssertionError("the kernel read megatron's global parallel state")

    names = [n for n in dir(ps) if n.startswith(("get_", "is_", "model_parallel_is_initialized"))
             and callable(getattr(ps, n))]
    for n in names:
        setattr(ps, n, _raise)
    return len(names)


def main():
    import torch
    import torch.distributed as dist

    inputs_path, out_dir = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))  # passed explicitly, never looked up
    inp = torch.load(inputs_path, weights_only=True)
    results = {"cases": {}}
    for case in inp["cases"]:
        results["cases"][case["name"]] = _run_case(inp, case, group, rank, world)
    results["megatron_imported_by_op"] = any(m.split(".")[0] == "megatron" for m in sys.modules)
    results["patched_getters"] = _forbid_megatron_state()
    first = inp["cases"][0]
    again = _run_case(inp, first, group, rank, world)
    results["same_with_state_forbidden"] = all(
        (a is None and b is None) or torch.equal(a, b)
        for a, b in zip(again.values(), results["cases"][first["name"]].values()))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier(group)
    dist.destroy_process_group()
    print(f"rank {rank}: done", flush=True)


if __name__ == "__main__":
    main()
