"""``.nemo`` import and export (models/nemo) against NeMo-layout fixtures written independently
(tests/nemo_fixture.py) from random Hugging Face models.

- A Llama-style model (GQA, RMSNorm, SwiGLU, RoPE, untied) saved at TP=2 as zarr in a tarball, and a GPT-style
  one (LayerNorm with biases, linear biases, learned positions, tied) at TP=1 as torch_dist in an extracted
  directory, import and give the logits of the same HF weights imported through ``import_hf`` (fp32, <= 1e-5)
  and of transformers itself (<= 1e-4, the HF parity tolerance).
- import -> export -> import is bit-exact, and the export is laid out as NeMo writes it.
"""

from __future__ import annotations

import tarfile

import pytest
import torch
import yaml

from tests.e2e.test_hf_parity import hf_reference_logits, megatron_logits
from tests.nemo_fixture import SPM_VOCAB, make_nemo

pytest.importorskip("transformers")

CASES = {
    "llama-zarr-tp2-tar": ("llama", 2, "zarr", True),
    "gpt2-torch_dist-tp1-dir": ("gpt2", 1, "torch_dist", False),
}


def _tokens():
    return torch.randint(0, SPM_VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def _weights(ckpt):
    from megatron_align.models.nemo.weights import read_weights

    return read_weights(ckpt / "weights")


@pytest.fixture(scope="module")
def imported(tmp_path_factory, megatron_single):
    from megatron_align.models.hf import import_hf
    from megatron_align.models.nemo.convert import import_nemo

    cache = {}

    def get(case):
        if case not in cache:
            kind, tp, backend, tarball = CASES[case]
            root = tmp_path_factory.mktemp(case)
            nemo, hf_dir = make_nemo(kind, root, tp=tp, backend=backend, tarball=tarball)
            cache[case] = (nemo, hf_dir, import_nemo(nemo, root / "ckpt"), import_hf(hf_dir, root / "via_hf"))
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_import_gives_the_source_models_logits(imported, case):
    from megatron_align.models.checkpoint import read_model_config

    nemo, hf_dir, ckpt, via_hf = imported(case)
    tokens = _tokens()
    ours, reference = megatron_logits(ckpt, tokens), megatron_logits(via_hf, tokens)
    real = slice(0, SPM_VOCAB)
    diff = (ours[..., real] - reference[..., real]).abs().max().item()
    assert diff <= 1e-5, f"{case}: max abs logit diff vs the HF-imported model {diff:.2e}"
    hf_diff = (ours[..., real] - hf_reference_logits(hf_dir, tokens)).abs().max().item()
    assert hf_diff <= 1e-4, f"{case}: vs transformers {hf_diff:.2e}"
    cfg = read_model_config(ckpt)
    tp = CASES[case][1]
    assert cfg.padded_vocab_size() == ours.shape[-1] == -(-SPM_VOCAB // (128 * tp)) * 128 * tp
    assert (ckpt / "tokenizer" / "tokenizer.model").read_bytes() == (
        (nemo / "0f1e2d3c4b5a69788796a5b4c3d2e1f0_tokenizer.model").read_bytes()
        if nemo.is_dir()
        else tarfile.open(nemo).extractfile("./0f1e2d3c4b5a69788796a5b4c3d2e1f0_tokenizer.model").read()
    )


@pytest.mark.parametrize("case", list(CASES))
def test_import_export_import_is_bit_exact(imported, case, tmp_path):
    from megatron_align.models.nemo.convert import export_nemo, import_nemo

    _, _, ckpt, _ = imported(case)
    out = export_nemo(ckpt, tmp_path / "exported.nemo", dtype="float32")
    with tarfile.open(out) as tar:
        names = tar.getnames()
        cfg = yaml.safe_load(tar.extractfile("./model_config.yaml").read())
    assert all(n == "." or n.startswith("./") for n in names)
    assert cfg["tokenizer"]["model"].startswith("nemo:") and f"./{cfg['tokenizer']['model'][5:]}" in names
    assert cfg["mcore_gpt"] is True and "./model_weights/metadata.json" in names
    again = import_nemo(out, tmp_path / "again")
    first, second = _weights(ckpt), _weights(again)
    assert sorted(first) == sorted(second)
    for key, tensor in first.items():
        assert second[key].dtype == tensor.dtype and torch.equal(second[key], tensor), key
