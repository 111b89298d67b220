"""Peak extra memory and time of per-token log-probs (forward + backward), method by method, side by side.

Methods (each measured in its own fresh process, so no method inherits another's heap):
- ``naive``: ``torch.log_softmax(logits.float(), -1).gather(...)``;
- ``trl``: TRL-style selective log-softmax: gather the target logits, then a ``logsumexp`` loop over the batch
  dimension of ``[B, S, V]`` logits, here 8 sequences of N / 8 tokens (our own code written after TRL's
  ``selective_log_softmax``);
- ``megatron``: megatron-core's ``tensor_parallel.vocab_parallel_cross_entropy`` (TP=1 over gloo); it keeps an
  fp32 softmax by overwriting its fp32 input logits in place;
- ``ours``: ``megatron_align.logprobs.token_logprobs`` (CPU: the row-chunked torch path);
- ``ours_inplace``: the same with ``inplace_backward=True``: the gradient is written over the logits after
  forward (which never modifies them), as megatron does, so no second [N, V] tensor is allocated;
- ``hidden+naive``: the LM-head matmul ``hidden @ weight.T`` followed by ``naive``: the time and memory any
  from-logits method adds to ``ours_fused``'s job;
- ``ours_fused``: ``megatron_align.logprobs.fused_lm_head_logprobs`` from hidden states and the output weight;
- ``ours_fused_main_grad``: the same with ``accumulate_into_main_grad=True``: the weight gradient is added to
  a preallocated fp32 ``weight.main_grad`` (megatron DDP's gradient buffer, counted as an input) instead of
  being allocated, as megatron's gradient accumulation fusion does.

What is measured, per (N tokens, V vocabulary, dtype):
- ``extra``: the process's peak resident size during forward + backward (``/proc/self/clear_refs`` resets the
  high-water mark just before) minus its size once the inputs exist, minus the gradient every method must
  return: the logits' gradient (N x V) for from-logits methods, the hidden and weight gradients for the
  from-hidden ones. It is shown in MiB and as a multiple of the logits' size (N x V x 4 bytes in fp32).
- ``held after``: what the process still holds once the step is over and its gradients are dropped (resident
  size minus the size before the step): the gradient block that ``ours`` keeps for the next call
  (``kernels/_cpu_pages.py``), 0 for the others. The memory run starts with that block freed, so ``extra``
  is what a cold call needs; a warm call reuses the held block and needs no more than that.
- ``time``: median wall time of forward + backward over ``--reps`` runs after one warm-up run, with glibc's
  default allocator behaviour (the memory run comes after them); ``cpu``: the median CPU time of the process
  (all threads) over the same runs, less disturbed than wall time when other jobs share the cores;
  ``first call``: the warm-up run's wall time (it pays for first-touching every fresh buffer).
The logits (or hidden and weight) are created outside the measured region and are never counted.

    python benchmarks/logprobs.py                       # N in {2048, 8192} x V in {32000, 128000}, fp32
    python benchmarks/logprobs.py --sizes 2048x32000 --hidden 256 --reps 3

For the memory run glibc is told to mmap every block of 128 KiB or more and to unmap it on free
(``MEGATRON_ALIGN_CPU_MALLOC=0`` keeps megatron_align's own setting off), so the resident size tracks live
tensors for every method alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("naive", "trl", "megatron", "ours", "ours_inplace", "hidden+naive", "ours_fused",
           "ours_fused_main_grad")
FROM_HIDDEN = ("hidden+naive", "ours_fused", "ours_fused_main_grad")


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)


def _step_fn(method: str, n: int, v: int, h: int, dtype):
    """Build inputs; return (fn running forward + backward and returning the log-probs, bytes of grads)."""
    import torch

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, v, (n,), generator=g)
    grad_out = torch.randn(n, generator=g)
    elem = torch.tensor([], dtype=dtype).element_size()
    if method in FROM_HIDDEN:
        hidden = (torch.randn(n, h, generator=g) * 0.5).to(dtype).requires_grad_()
        weight = (torch.randn(v, h, generator=g) * h ** -0.5).to(dtype).requires_grad_()
        if method in ("ours_fused", "ours_fused_main_grad"):
            from megatron_align.logprobs import fused_lm_head_logprobs

            main_grad = method == "ours_fused_main_grad"
            if main_grad:  # megatron DDP's fp32 gradient buffer: exists before the step, an input here
                weight.main_grad = torch.zeros(v, h)

            def fn():
                lp = fused_lm_head_logprobs(hidden, weight, target, accumulate_into_main_grad=main_grad)
                lp.backward(grad_out)
                return lp
        else:
            def fn():
                logits = hidden @ weight.t()  # [N, V]
                lp = torch.log_softmax(logits.float(), -1).gather(1, target[:, None]).squeeze(1)
                lp.backward(grad_out)
                return lp

        fn.leaves = [hidden, weight]

        def clear():
            hidden.grad = None
            weight.grad = None
        # the gradients returned: hidden's, and weight's unless it is added to the existing main_grad
        return fn, clear, (n * h + (0 if method == "ours_fused_main_grad" else v * h)) * elem

    logits = (torch.randn(n, v, generator=g) * 2).to(dtype).requires_grad_()
    if method == "naive":
        def fn():
            lp = torch.log_softmax(logits.float(), -1).gather(1, target[:, None]).squeeze(1)
            lp.backward(grad_out)
            return lp
    elif method == "trl":
        def fn():
            picked = logits.gather(1, target[:, None]).squeeze(1).float()
            # TRL loops over the batch dimension of [B, S, V]: here B = 8 sequences of N / 8 tokens
            lse = torch.cat([torch.logsumexp(seq.float(), -1) for seq in logits.view(8, n // 8, v)])
            lp = picked - lse
            lp.backward(grad_out)
            return lp
    elif method == "megatron":
        import torch.distributed as dist
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            dist.init_process_group("gloo", rank=0, world_size=1)
            parallel_state.initialize_model_parallel(1, 1)

        def fn():
            # megatron wants [S, B, V]; it overwrites its (fp32) input with the softmax, so each run gets its
            # own copy made outside the measured region (see _measure)
            x = fn.fresh
            lp = -vocab_parallel_cross_entropy(x.view(n, 1, v), target.view(n, 1)).view(n)
            lp.backward(grad_out)
            return lp
        fn.fresh = None
    elif method in ("ours", "ours_inplace"):
        from megatron_align.logprobs import token_logprobs

        def fn():
            x = fn.fresh if method == "ours_inplace" else logits
            lp = token_logprobs(x, target, inplace_backward=method == "ours_inplace")
            lp.backward(grad_out)
            return lp
        fn.fresh = None
    else:
        raise ValueError(method)

    fn.leaves = [logits]

    def clear():
        logits.grad = None
    if method in ("megatron", "ours_inplace"):
        def prepare():
            # a leaf that may be overwritten: the same values as ``logits``, made outside the measurement
            clear()
            fn.fresh = logits.detach().clone().requires_grad_()
        return fn, prepare, n * v * elem
    return fn, clear, n * v * elem


def _mmap_large_blocks() -> None:
    """From now on glibc mmaps every block >= 128 KiB and unmaps it on free, and what the heap holds free is
    returned now: the resident size then tracks live tensors (fixed thresholds also switch off glibc's dynamic
    one, which lets freed multi-MiB temporaries stay in the heap and hide later allocations)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)


def run_one(method: str, n: int, v: int, h: int, dtype_name: str, reps: int) -> dict:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    fn, clear, grad_bytes = _step_fn(method, n, v, h, dtype)
    # 1. time, with glibc's default allocator behaviour: one warm-up run (reported as ``first``), then the
    # median of ``reps``
    clear()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(max(1, reps)):
        clear()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # 2. peak memory of one more run, with large blocks mmap-ed (slower, so not timed), from a cold state:
    # the gradient block that ``ours`` keeps for reuse between calls is freed first, so the run pays for its
    # gradient like every other method; what a method keeps after the call is reported as ``held``
    clear()
    from megatron_align.kernels import _cpu_pages

    _cpu_pages.release_cached()
    _mmap_large_blocks()
    base = _kib("VmRSS")
    _reset_peak()
    fn()
    extra = (_kib("VmHWM") - base) * 1024 - grad_bytes
    drop_grads(fn)
    held = (_kib("VmRSS") - base) * 1024
    return dict(method=method, n=n, v=v, h=h, dtype=dtype_name, time_s=statistics.median(times),
                cpu_s=statistics.median(cpu), first_s=first,
                extra_bytes=extra, grad_bytes=grad_bytes, held_bytes=held, logits_bytes=n * v * 4)


def drop_grads(fn) -> None:
    """Drop every gradient the step returned (making no new inputs), as a caller does after using them."""
    for t in fn.leaves + [getattr(fn, "fresh", None)]:
        if t is not None:
            t.grad = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="*", default=["2048x32000", "2048x128000", "8192x32000", "8192x128000"],
                    help="N x V pairs")
    ap.add_argument("--hidden", type=int, default=256, help="hidden size H for the from-hidden methods")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "N", "V", "H"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        m, n, v, h = args.one
        print(json.dumps(run_one(m, int(n), int(v), int(h), args.dtype, args.reps)))
        return

    env = dict(os.environ, MEGATRON_ALIGN_CPU_MALLOC="0")
    rows = []
    for size in args.sizes:
        n, v = (int(x) for x in size.split("x"))
        for m in args.methods:
            cmd = [sys.executable, __file__, "--one", m, str(n), str(v), str(args.hidden),
                   "--dtype", args.dtype, "--reps", str(args.reps)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
                rows.append(dict(method=m, n=n, v=v, h=args.hidden, error=tail[0][:80]))
            else:
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"# {m} {n}x{v}: {rows[-1]}", file=sys.stderr, flush=True)
    _print_table(rows, args)


def _print_table(rows: list[dict], args) -> None:
    print(f"dtype {args.dtype}; H = {args.hidden} for the from-hidden methods; extra = peak RSS during "
          "forward+backward beyond inputs and the inputs' own gradients\n")
    print("| N x V | method | extra (MiB) | extra / logits size | with gradients / logits size | "
          "extra / naive's extra | held after / logits size | time (s) | time / fastest | cpu (s) | "
          "cpu / fastest | first call (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (n, v) in dict.fromkeys((r["n"], r["v"]) for r in rows):
        group = [r for r in rows if (r["n"], r["v"]) == (n, v)]
        ok = {r["method"]: r for r in group if "error" not in r}
        naive_extra = ok["naive"]["extra_bytes"] if "naive" in ok else None
        fastest_logits = min((r["time_s"] for m, r in ok.items() if m not in FROM_HIDDEN), default=None)
        fastest_hidden = min((r["time_s"] for m, r in ok.items() if m in FROM_HIDDEN), default=None)
        cpu_logits = min((r["cpu_s"] for m, r in ok.items() if m not in FROM_HIDDEN), default=None)
        cpu_hidden = min((r["cpu_s"] for m, r in ok.items() if m in FROM_HIDDEN), default=None)
        for r in group:
            if "error" in r:
                print(f"| {n}x{v} | {r['method']} | failed: {r['error']} | | | | | | | | | |")
                continue
            mib = r["extra_bytes"] / 2**20
            ratio = r["extra_bytes"] / r["logits_bytes"]
            from_logits = r["method"] not in FROM_HIDDEN
            vs_naive = f"{r['extra_bytes'] / naive_extra:.1%}" if naive_extra and from_logits else ""
            fastest = fastest_hidden if r["method"] in FROM_HIDDEN else fastest_logits
            fastest_cpu = cpu_hidden if r["method"] in FROM_HIDDEN else cpu_logits
            with_grads = (r["extra_bytes"] + r["grad_bytes"]) / r["logits_bytes"]
            held = r["held_bytes"] / r["logits_bytes"]
            print(f"| {n}x{v} | {r['method']} | {mib:.0f} | {ratio:.3f}x | {with_grads:.3f}x | {vs_naive} | "
                  f"{held:.3f}x | {r['time_s']:.2f} | {r['time_s'] / fastest:.2f}x | {r['cpu_s']:.2f} | "
                  f"{r['cpu_s'] / fastest_cpu:.2f}x | {r['first_s']:.2f} |")


if __name__ == "__main__":
    main()
