"""Under torchrun (2 gloo ranks): vocab-parallel token log-probs at TP=2 vs the full-vocabulary reference.

Megatron's parallel state is never initialised, and every ``get_*`` accessor of
``megatron.core.parallel_state`` is replaced by one that raises: the kernels must take their process group as
an argument. Each rank holds its half of the vocabulary (V odd-sized per rank: 2 x 517); the log-probs and
entropy must equal the TP=1 result, and each rank's gradient must equal its slice of the full reference
gradient. Prints ``LOGPROBS_TP2_OK <rank>`` on success.
"""

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def _forbid_megatron_state() -> None:
    from megatron.core import parallel_state

    def boom(*_a, **_k):
        raise AssertionError("a kernel read megatron's global parallel state")

    for name in dir(parallel_state):
        if name.startswith("get_") and callable(getattr(parallel_state, name)):
            setattr(parallel_state, name, boom)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))
    _forbid_megatron_state()
    from megatron_align.kernels import reference
    from megatron_align.logprobs import token_logprobs

    v_local = 517
    for backend, block in (("torch", 4 * 300), ("triton", 128)):
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(42)  # same full tensors on both ranks
            x_full = (torch.randn(3, 7, v_local * world, generator=g) * 4).to(dtype)  # [B, S, V]
            t = torch.randint(0, v_local * world, (3, 7), generator=g)
            t[0, :3] = -100
            g_lp, g_ent = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)

            x_ref = x_full.double().requires_grad_()
            rlp, rent = reference.token_logprobs(x_ref, t, temperature=0.8)
            ((rlp * g_lp).sum() + (rent * g_ent).sum()).backward()

            # TP=2: this rank's slice only
            x_mine = x_full[..., rank * v_local:(rank + 1) * v_local].clone().requires_grad_()
            lp, ent = token_logprobs(x_mine, t, tp_group=group, temperature=0.8, return_entropy=True,
                                     backend=backend, block=block)
            ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
            # TP=1 on the full logits, same backend
            lp1, ent1 = token_logprobs(x_full, t, temperature=0.8, return_entropy=True, backend=backend,
                                       block=block)

            tol_g = 6e-5 if dtype == torch.float32 else 1.6e-2
            torch.testing.assert_close(lp, lp1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ent, ent1, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(lp.double(), rlp, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(ent.double(), rent, atol=1e-4, rtol=1e-5)
            ref_slice = x_ref.grad[..., rank * v_local:(rank + 1) * v_local].to(dtype).double()
            torch.testing.assert_close(x_mine.grad.double(), ref_slice, atol=tol_g, rtol=1e-5)
            print(f"rank {rank} {backend} {dtype}: ok", flush=True)
    dist.barrier()
    print(f"LOGPROBS_TP2_OK {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
