"""The CPU speed settings of docs/benchmarks.md: glibc malloc tuning (``distributed/cpu_malloc.py``) and
torch's fused AdamW under megatron's optimizer (``training/setup._fuse_torch_adam``).

malloc settings are process-global, so those scenarios run in fresh interpreters and report JSON on their last
stdout line (as tests/unit/distributed/test_cpu_compat.py does).
"""

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import _clean_env

MALLOC = """
import json, resource, torch
from megatron_align.distributed.cpu_malloc import tune_cpu_malloc

def faults_of_a_64mib_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)  # 64 MiB, written once, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss_mib():
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) // 1024

untuned = [faults_of_a_64mib_tensor() for _ in range(4)]
base = rss_mib()
on = tune_cpu_malloc()
tuned = [faults_of_a_64mib_tensor() for _ in range(16)]
print(json.dumps({"on": on, "again": tune_cpu_malloc(), "untuned": untuned, "tuned": tuned,
                  "rss_growth_mib": rss_mib() - base}))
"""


def _run(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], env={**_clean_env(), **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_malloc_tuning_reuses_large_blocks():
    r = _run(MALLOC)
    assert r["on"] and r["again"]
    # 64 MiB is 16384 pages: page-faulted in again on every allocation by default. Tuned, glibc reuses the
    # freed block once its free neighbours have coalesced (after up to ~8 rounds here: torch's 64-byte aligned
    # requests do not fit an exactly sized free chunk), and holds those few freed copies meanwhile.
    assert min(r["untuned"]) > 10000, r
    assert max(r["tuned"][-4:]) < 1000, r
    assert r["rss_growth_mib"] < 12 * 64, r


def test_malloc_tuning_opt_out():
    r = _run(MALLOC, MEGATRON_ALIGN_CPU_MALLOC="0")
    assert not r["on"] and not r["again"] and min(r["tuned"]) > 10000


@pytest.mark.parametrize("name", ["adamw", "distributed_fused_adam"])
def test_fused_adamw_is_the_same_update(megatron_single, name):
    from megatron_align.distributed import seed_all
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.training.schedule import forward_backward
    from megatron_align.training.setup import _torch_optimizers, prepare_for_training
    from tests.helpers import positions, tiny_llama, tokens

    tok = tokens(2, 16, 1000, seed=0)
    mb = {"tokens": tok, "labels": tok.roll(-1, 1), "loss_mask": torch.ones(2, 16),
          "position_ids": positions(tok)}
    finals = []
    for fused in (True, False):
        cfg = tiny_llama()
        cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = name, 1e-2, 0.1
        seed_all(7, 0)
        ddp, opt = prepare_for_training(build_gpt_model(cfg), cfg.optim, "32")
        groups = [g for o in _torch_optimizers(opt) for g in o.param_groups]
        assert groups and all(g["fused"] and not g["foreach"] for g in groups)
        if not fused:  # torch's default single-tensor loop, what megatron builds
            for g in groups:
                g["fused"], g["foreach"] = None, None
        for _ in range(3):
            ddp.zero_grad_buffer()
            opt.zero_grad()
            forward_backward([ddp], [mb], 1, 16, 2)
            opt.step()
        finals.append({n: p.detach().clone() for n, p in ddp.named_parameters()})
    for n, p in finals[0].items():
        torch.testing.assert_close(p, finals[1][n], rtol=1e-5, atol=1e-6, msg=n)
