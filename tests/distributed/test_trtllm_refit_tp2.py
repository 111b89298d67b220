"""TRT-LLM refit conversion against a real megatron model on 2 gloo ranks (TP=2, then PP=2).

``workers/trtllm_refit_worker.py`` builds a random tiny GQA Llama GPTModel (norms perturbed away from 1),
dumps every rank's state dict, runs ``gather.iter_gathered_groups`` (with megatron's global parallel state
made to raise) and saves megatron's logits; it also drives ``TRTLLMBackend.refit`` / ``generate`` over both
ranks with the fake engine of tests/unit/generation/trtllm/test_backend.py (rank 0 owns it, each rank sends
the entry of its own GPU). Here, in one process: the dumped shards go through the pure
``convert.megatron_shards_to_hf``; the result must equal, bit for bit, what the in-job gather produced on
each rank, and transformers' ``LlamaForCausalLM`` loaded with it must give megatron's logits (first
``vocab_size`` columns, atol 1e-4).
"""

import json

import pytest
import torch

from megatron_align.generation.trtllm.convert import megatron_shards_to_hf
from megatron_align.models.hf.config_map import hf_config_from_model
from tests.helpers import WORKERS, run_ranks, tokens

pytestmark = pytest.mark.distributed

transformers = pytest.importorskip("transformers")


def _load(path):
    return torch.load(path, weights_only=True)


def test_refit_conversion_of_real_tp2_and_pp2_models(tmp_path):
    import sys

    sys.path.insert(0, str(WORKERS))
    from trtllm_refit_worker import LAYOUTS, model_config

    tok = tokens(2, 12, 1000, seed=3)
    torch.save(tok, tmp_path / "tokens.pt")
    proc = run_ranks(WORKERS / "trtllm_refit_worker.py", ["--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "TRTLLM_REFIT_OK 0" in proc.stdout and "TRTLLM_REFIT_OK 1" in proc.stdout

    for tag, tp, pp in LAYOUTS:
        cfg = model_config(tp, pp)
        shards = {(p, t): _load(tmp_path / f"{tag}_shard_p{p}_t{t}.pt") for p in range(pp) for t in range(tp)}
        hf = megatron_shards_to_hf(shards, cfg, tp, pp)
        assert "lm_head.weight" in hf and hf["model.embed_tokens.weight"].shape == (1000, cfg.hidden_size)
        for rank in range(2):
            gathered = _load(tmp_path / f"{tag}_gathered_r{rank}.pt")
            assert sorted(gathered) == sorted(hf), tag
            assert all(torch.equal(gathered[k], hf[k]) for k in hf), tag

        reports = [json.loads((tmp_path / f"{tag}_backend_r{r}.json").read_text()) for r in range(2)]
        assert reports[0]["tokens"] == reports[1]["tokens"] and reports[0]["lengths"] == reports[1]["lengths"]
        assert reports[0]["tokens"][1][:2] == [4, 5]  # the fake engine's greedy continuation
        assert reports[0]["loaded_equal"] == {"GPU-r0": True, "GPU-r1": True}, tag
        calls = reports[0]["calls"]
        assert calls[-1] is None and None not in calls[:-1] and len(calls) > 2, tag  # buckets, then finalize

        config = transformers.LlamaConfig(**hf_config_from_model(cfg, "llama"))
        model = transformers.LlamaForCausalLM(config).eval()
        missing, unexpected = model.load_state_dict(hf, strict=False)
        assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
        with torch.no_grad():
            ref = model(input_ids=tok).logits.float()  # [B, S, V]
        ours = _load(tmp_path / f"{tag}_logits.pt")  # [B, S, Vp]
        diff = (ours[..., :1000] - ref).abs().max().item()
        assert diff <= 1e-4, f"{tag}: max abs logit diff {diff:.3e}"
