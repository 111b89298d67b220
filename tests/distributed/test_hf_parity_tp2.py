"""HF models converted at TP=1 load at TP=2 and match transformers; a TP=2 re-save exports back bit-exact.

In this (single-process) pytest process: tiny random Llama (GQA, untied), Qwen2 (QKV biases, tied) and GPT-2
(tied, learned positions) are made, imported with ``import_hf`` and run through transformers for reference
logits. Under torchrun, ``workers/parity_worker.py`` loads each checkpoint at TP=2 and compares its gathered
logits with transformers' (first ``vocab_size`` columns, atol 1e-4); the Llama one is re-saved at TP=2 and
``export_hf`` (TP=1, here) must give back every original tensor.
"""

import json

import pytest
import torch

from megatron_align.models.hf import export_hf, import_hf
from megatron_align.models.hf.convert import read_hf_state_dict
from tests.e2e.test_hf_parity import CASES, hf_reference_logits, make_tiny_hf, random_tokens
from tests.helpers import WORKERS, run_ranks

pytestmark = pytest.mark.distributed

pytest.importorskip("transformers")

TP2_KINDS = ("llama", "qwen2", "gpt2")  # the MQA Mistral (1 kv group) cannot be split over 2 ranks


def test_converted_models_match_transformers_at_tp2(tmp_path_factory, megatron_single):
    d = tmp_path_factory.mktemp("hf_tp2")
    tok = random_tokens()
    torch.save(tok, d / "tokens.pt")
    cases = []
    for kind in TP2_KINDS:
        hf_dir = make_tiny_hf(kind, d / kind / "hf", **CASES[kind][0])
        ckpt = import_hf(hf_dir, d / kind / "ckpt")
        torch.save(hf_reference_logits(hf_dir, tok), d / kind / "ref.pt")
        case = {"ckpt": str(ckpt), "kind": "gpt", "mode": "logits", "tokens": str(d / "tokens.pt"),
                "ref": str(d / kind / "ref.pt"), "atol": 1e-4}
        if kind == "llama":
            case["save_to"] = str(d / "llama_tp2")
        cases.append(case)
    spec = d / "spec.json"
    spec.write_text(json.dumps({"cases": cases}))

    proc = run_ranks(WORKERS / "parity_worker.py", ["--tp", "2", "--spec", str(spec)])
    assert proc.returncode == 0, proc.stdout[-6000:]
    results = [json.loads((d / f"spec.json.rank{r}.json").read_text()) for r in range(2)]
    assert all(not r.get("failures") and len(r["diffs"]) == 3 for r in results), results

    out = export_hf(d / "llama_tp2", d / "llama_export")
    original, exported = read_hf_state_dict(d / "llama" / "hf"), read_hf_state_dict(out)
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)
