"""Same weights, same input, different layouts: TP=2 vs TP=1, PP=2 vs PP=1, DP=2 vs DP=1, srun-style start.

The references are computed in this (single-process, TP=1) pytest process; the 2-rank side runs
``workers/parity_worker.py`` under torchrun (or with SLURM_* variables only) and loads the same checkpoint.
Checkpoints written by the 2-rank side at TP=2 / PP=2 are loaded back here at TP=1 / PP=1.
"""

import json

import pytest
import torch

from megatron_align.models.checkpoint import load_checkpoint, save_checkpoint
from megatron_align.models.gpt import build_gpt_model
from megatron_align.models.reward import build_reward_model
from megatron_align.training.schedule import forward_backward
from megatron_align.training.setup import prepare_for_training
from tests.distributed.workers.parity_worker import _microbatches
from tests.helpers import WORKERS, positions, run_ranks, tiny_gpt2, tiny_llama, tokens

pytestmark = pytest.mark.distributed

WORKER = WORKERS / "parity_worker.py"
NUM_MB = 2


def _logits(model, tok, vocab):
    model.eval()
    with torch.no_grad():
        return model(tok, positions(tok), None)[..., :vocab]


@pytest.fixture(scope="module")
def refs(tmp_path_factory, megatron_single):
    """Checkpoints at TP=1/PP=1 plus reference logits, rewards, loss and DP=1 gradients."""
    d = tmp_path_factory.mktemp("parity")
    tok = tokens(4, 16, 1000, seed=3)
    torch.save(tok, d / "tokens.pt")
    out = {"dir": d, "tokens": tok}
    for name, cfg in (("llama", tiny_llama()), ("gpt2", tiny_gpt2())):
        model = build_gpt_model(cfg, parallel_output=False)
        save_checkpoint(d / name, model, cfg)
        torch.save(_logits(model, tok, 1000), d / f"{name}_logits.pt")
        with torch.no_grad():
            res = forward_backward([model], _microbatches(tok, NUM_MB), NUM_MB, 16, 2, forward_only=True)
        torch.save(torch.tensor(res["loss_sum"] / res["num_tokens"]), d / f"{name}_loss.pt")
    # reward model (9 SteerLM attributes)
    rcfg = tiny_llama(num_attributes=9)
    rm = build_reward_model(rcfg)
    save_checkpoint(d / "rm", rm, rcfg)
    rm.eval()
    with torch.no_grad():
        torch.save(rm(tok, positions(tok), None), d / "rm_rewards.pt")
    # DP=1 gradients on the whole batch (fresh model from the llama checkpoint)
    cfg = tiny_llama()
    model = build_gpt_model(cfg)
    load_checkpoint(d / "llama", model)
    ddp, _ = prepare_for_training(model, cfg.optim, "32")
    ddp.zero_grad_buffer()
    forward_backward([ddp], _microbatches(tok, 1), 1, 16, 4)
    torch.save({n: p.main_grad.clone() for n, p in model.named_parameters()}, d / "llama_grads.pt")
    return out


def _spec(refs, cases, name="spec.json"):
    path = refs["dir"] / name
    path.write_text(json.dumps({"cases": cases}))
    return path


def _check(proc, spec, nranks=2):
    assert proc.returncode == 0, proc.stdout[-6000:]
    results = [json.loads(open(f"{spec}.rank{r}.json").read()) for r in range(nranks)]
    assert all(not r.get("failures") for r in results), results
    return results


def test_tp2_logits_equal_tp1_and_tp2_checkpoint_loads_at_tp1(refs):
    d = refs["dir"]
    cases = [
        {"ckpt": str(d / "llama"), "kind": "gpt", "mode": "logits", "tokens": str(d / "tokens.pt"),
         "ref": str(d / "llama_logits.pt"), "atol": 1e-5, "save_to": str(d / "llama_saved_tp2")},
        {"ckpt": str(d / "gpt2"), "kind": "gpt", "mode": "logits", "tokens": str(d / "tokens.pt"),
         "ref": str(d / "gpt2_logits.pt"), "atol": 1e-5},
        {"ckpt": str(d / "rm"), "kind": "reward", "mode": "rewards", "tokens": str(d / "tokens.pt"),
         "ref": str(d / "rm_rewards.pt"), "atol": 1e-5},
    ]
    spec = _spec(refs, cases, "tp2.json")
    results = _check(run_ranks(WORKER, ["--tp", "2", "--spec", str(spec)]), spec)
    assert all(r["launcher"] == "torchrun" for r in results)
    assert len(results[0]["diffs"]) == 3
    # save TP=2 -> load TP=1: logits equal
    model = build_gpt_model(tiny_llama(), parallel_output=False)
    load_checkpoint(d / "llama_saved_tp2", model)
    ref = torch.load(d / "llama_logits.pt")
    assert (_logits(model, refs["tokens"], 1000) - ref).abs().max().item() <= 1e-5


def test_pp2_loss_equals_pp1_and_pp2_checkpoint_loads_at_pp1(refs):
    d = refs["dir"]
    cases = [
        {"ckpt": str(d / name), "kind": "gpt", "mode": "loss", "tokens": str(d / "tokens.pt"),
         "ref": str(d / f"{name}_loss.pt"), "atol": 1e-6, "num_microbatches": NUM_MB,
         **({"save_to": str(d / "llama_saved_pp2")} if name == "llama" else {})}
        for name in ("llama", "gpt2")
    ]
    spec = _spec(refs, cases, "pp2.json")
    results = _check(run_ranks(WORKER, ["--pp", "2", "--spec", str(spec)]), spec)
    assert "loss" in results[1] and "loss" not in results[0]  # only the last stage holds the loss
    model = build_gpt_model(tiny_llama(), parallel_output=False)
    load_checkpoint(d / "llama_saved_pp2", model)
    ref = torch.load(d / "llama_logits.pt")
    assert (_logits(model, refs["tokens"], 1000) - ref).abs().max().item() <= 1e-5


def test_dp2_gradients_equal_dp1_on_concatenated_batch(refs):
    d = refs["dir"]
    cases = [{"ckpt": str(d / "llama"), "kind": "gpt", "mode": "grads", "tokens": str(d / "tokens.pt"),
              "ref": str(d / "llama_grads.pt"), "atol": 1e-6, "num_microbatches": 1}]
    spec = _spec(refs, cases, "dp2.json")
    results = _check(run_ranks(WORKER, ["--spec", str(spec)]), spec)
    assert all(r["world_size"] == 2 for r in results)


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2_sequence_parallel"])
def test_tp2_replicated_parameter_gradients_equal_tp1(refs, sequence_parallel):
    """Norm weights are whole on every TP rank; under sequence parallelism each rank's gradient covers half
    the tokens until megatron's finalize step all-reduces the parameters marked ``sequence_parallel`` (our
    local norms must carry the mark, and the backward's reduce-scatter must run on CPU)."""
    d = refs["dir"]
    cases = [{"ckpt": str(d / "llama"), "kind": "gpt", "mode": "grads", "tokens": str(d / "tokens.pt"),
              "ref": str(d / "llama_grads.pt"), "atol": 1e-6, "num_microbatches": 1,
              "sequence_parallel": sequence_parallel}]
    spec = _spec(refs, cases, f"tp2_grads_sp{int(sequence_parallel)}.json")
    results = _check(run_ranks(WORKER, ["--tp", "2", "--spec", str(spec)]), spec)
    for r in results:  # every layer's two norms and the final norm were compared
        assert sum("layernorm" in n for n in r["compared"]) == 2 * 2 + 1, r["compared"]


def test_srun_style_start_passes_tp2(refs):
    d = refs["dir"]
    cases = [{"ckpt": str(d / "llama"), "kind": "gpt", "mode": "logits", "tokens": str(d / "tokens.pt"),
              "ref": str(d / "llama_logits.pt"), "atol": 1e-5}]
    spec = _spec(refs, cases, "srun.json")
    results = _check(run_ranks(WORKER, ["--tp", "2", "--spec", str(spec)], launcher="slurm"), spec)
    assert all(r["launcher"] == "slurm" for r in results)
