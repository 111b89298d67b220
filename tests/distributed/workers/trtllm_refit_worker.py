"""Under torchrun (2 gloo ranks): a real megatron GPTModel at TP=2, then at PP=2, for the TRT-LLM refit test.

Usage: ``trtllm_refit_worker.py --out DIR`` (DIR holds ``tokens.pt``). For each layout (tag ``tp2`` / ``pp2``)
every rank writes ``<tag>_shard_p<pp>_t<tp>.pt`` (its GPTModel state dict), ``<tag>_gathered_r<rank>.pt``
(the HF tensors ``gather.iter_gathered_groups`` produced on it, called with megatron's global parallel state
made to raise, so the helper must use the groups it is given) and the rank that ends with the full logits
writes ``<tag>_logits.pt`` ``[B, S, Vp]`` (PP=2: stage 0 sends its hidden states to stage 1 by hand).
Prints ``TRTLLM_REFIT_OK <rank>``.
"""

import argparse
import contextlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

LAYOUTS = (("tp2", 2, 1), ("pp2", 1, 2))


def model_config(tp, pp):
    from tests.helpers import tiny_llama  # run_ranks puts the repository root on PYTHONPATH

    return tiny_llama(num_layers=4, init_method_std=0.1, tensor_model_parallel_size=tp,
                      pipeline_model_parallel_size=pp)


@contextlib.contextmanager
def megatron_state_forbidden():
    from megatron.core import parallel_state

    saved = {n: getattr(parallel_state, n) for n in dir(parallel_state)
             if n.startswith("get_") and callable(getattr(parallel_state, n))}

    def boom(*_a, **_k):
        raise AssertionError("the refit gather read megatron's global parallel state")

    for n in saved:
        setattr(parallel_state, n, boom)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(parallel_state, n, f)


def run_layout(tag, tp, pp, out, tok):
    from megatron.core import parallel_state as ps

    from megatron_align.distributed import start
    from megatron_align.generation.trtllm.gather import iter_gathered_groups
    from megatron_align.models.gpt import build_gpt_model

    start(tp, pp, seed=1234)
    cfg = model_config(tp, pp)
    model = build_gpt_model(cfg, parallel_output=False)
    torch.manual_seed(7 + ps.get_pipeline_model_parallel_rank())  # same noise on the TP ranks of a stage
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # megatron starts norms at 1: make their mapping visible
                p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    p_rank, t_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    rank = dist.get_rank()
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save(state, os.path.join(out, f"{tag}_shard_p{p_rank}_t{t_rank}.pt"))

    tp_group, pp_group = ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group()
    with megatron_state_forbidden():
        gathered = {n: t.clone() for g in iter_gathered_groups(model, cfg, tp_group, pp_group) for n, t in g}
    torch.save(gathered, os.path.join(out, f"{tag}_gathered_r{rank}.pt"))
    backend_refit_and_generate(tag, model, cfg, tp_group, pp_group, gathered, out)

    pos = torch.arange(tok.shape[1]).unsqueeze(0).expand_as(tok).contiguous()
    with torch.no_grad():
        if pp == 1:
            logits = model(tok, pos, None)  # [B, S, Vp], gathered over TP
        elif p_rank == 0:
            hidden = model(tok, pos, None)  # [S, B, H]
            dist.send(hidden.contiguous(), dst=1)
            logits = None
        else:
            hidden = torch.empty(tok.shape[1], tok.shape[0], cfg.hidden_size)
            dist.recv(hidden, src=0)
            model.set_input_tensor(hidden)
            logits = model(tok, pos, None)
    if logits is not None and t_rank == 0:
        torch.save(logits.float(), os.path.join(out, f"{tag}_logits.pt"))
    dist.barrier()


def backend_refit_and_generate(tag, model, cfg, tp_group, pp_group, gathered, out):
    """TRTLLMBackend over both ranks with the CPU fakes of tests/unit/generation/trtllm/test_backend.py: rank
    0 owns the (fake) engine; each rank sends its own GPU's entry; generate's result reaches both ranks."""
    import json

    from megatron_align.config.generation import TRTLLMConfig
    from megatron_align.generation.interface import SamplingParams
    from megatron_align.generation.trtllm.backend import TRTLLMBackend
    from tests.unit.generation.trtllm.test_backend import FakeLLM, fake_handle

    rank = dist.get_rank()
    llm = FakeLLM(uuids=("GPU-r0", "GPU-r1")) if rank == 0 else None
    backend = TRTLLMBackend(out, cfg, TRTLLMConfig(enable=True), tp_group=tp_group, pp_group=pp_group,
                            refit_group=dist.group.WORLD, llm=llm, sampling_cls=dict, make_handle=fake_handle,
                            device_uuid=f"GPU-r{rank}", dtype=torch.float32)
    backend.bucket_bytes = 100_000
    with megatron_state_forbidden():
        backend.refit(model)
        result = backend.generate([[1, 2, 3], [4]], SamplingParams(greedy=True, tokens_to_generate=4))
    report = {"rank": rank, "tokens": result.tokens.tolist(), "lengths": result.lengths.tolist()}
    if llm is not None:
        report["calls"] = [names for _, names in llm.calls]
        report["loaded_equal"] = {u: sorted(d) == sorted(gathered) and all(torch.equal(d[k], gathered[k])
                                                                          for k in gathered)
                                  for u, d in llm.loaded_by.items()}
    with open(os.path.join(out, f"{tag}_backend_r{rank}.json"), "w") as f:
        json.dump(report, f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tok = torch.load(os.path.join(args.out, "tokens.pt"), weights_only=True)
    for tag, tp, pp in LAYOUTS:
        run_layout(tag, tp, pp, args.out, tok)
    rank = dist.get_rank()
    from megatron_align.distributed import shutdown

    shutdown()
    print(f"TRTLLM_REFIT_OK {rank}", flush=True)


if __name__ == "__main__":
    main()
