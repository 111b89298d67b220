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


# ------------------------------------------------------------------------------------------------------------
# the seed documents' command lines with .nemo paths (converted once into the cache, then run as usual)
# ------------------------------------------------------------------------------------------------------------
def test_sft_restores_from_a_nemo_tarball_and_learns(imported, tmp_path):
    import json
    import sys

    from tests.e2e.test_sft import FIXTURE, SFT
    from tests.helpers import run_in_session

    nemo, _, _, _ = imported("llama-zarr-tp2-tar")
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = [
        f"model.restore_from_path={nemo}",
        "model.data.chat=True",
        f"model.data.train_ds.file_path={FIXTURE}",
        f"model.data.validation_ds.file_path={FIXTURE}",
        "trainer.precision=32",
        "trainer.sft.max_steps=12",
        "trainer.sft.val_check_interval=12",
        "trainer.sft.save_interval=12",
        "trainer.sft.max_epochs=100",
        "model.data.train_ds.max_seq_length=256",
        "model.data.validation_ds.max_seq_length=256",
        "model.data.train_ds.micro_batch_size=2",
        "model.data.train_ds.global_batch_size=4",
        "model.data.validation_ds.micro_batch_size=2",
        "model.data.validation_ds.global_batch_size=4",
        "model.optim.lr=3e-3",
        "model.optim.sched.name=Constant",
        "exp_manager.create_tensorboard_logger=False",
        f"exp_manager.explicit_log_dir={run}",
    ]
    proc = run_in_session([sys.executable, str(SFT), *args], {"MEGATRON_ALIGN_CACHE": str(cache)}, 900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "a .nemo checkpoint; importing it" in proc.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3]) - 0.3  # it learned
    assert len(list((cache / "nemo").glob("*/metadata.json"))) == 1  # imported once, into the cache
    again = run_in_session(
        [
            sys.executable,
            str(SFT),
            *args[:-1],
            f"exp_manager.explicit_log_dir={run}2",
            "trainer.sft.max_steps=1",
        ],
        {"MEGATRON_ALIGN_CACHE": str(cache)},
        900,
    )
    assert again.returncode == 0 and "importing it" not in again.stderr  # the copy is reused


def test_eval_script_generates_from_an_extracted_nemo_directory(imported, tmp_path):
    import sys

    from tests.helpers import ROOT, run_in_session

    nemo, _, _, _ = imported("gpt2-torch_dist-tp1-dir")
    script = ROOT / "examples" / "nlp" / "language_modeling" / "megatron_gpt_eval.py"
    proc = run_in_session(
        [
            sys.executable,
            str(script),
            f"gpt_model_file={nemo}",
            "trainer.precision=32",
            "inference.greedy=True",
            "inference.tokens_to_generate=4",
            "prompts=['the quick brown fox']",
        ],
        {"MEGATRON_ALIGN_CACHE": str(tmp_path)},
        600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "the quick brown fox" in proc.stdout


def test_an_unsafe_nemo_is_refused_in_one_line_and_writes_nothing(tmp_path):
    import io
    import sys

    from tests.e2e.test_sft import SFT
    from tests.helpers import run_in_session

    bad = tmp_path / "evil.nemo"
    with tarfile.open(bad, "w:") as tar:
        for name, data in (("./model_config.yaml", b"mcore_gpt: true\n"), ("./../escaped.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    proc = run_in_session(
        [sys.executable, str(SFT), f"model.restore_from_path={bad}"],
        {"MEGATRON_ALIGN_CACHE": str(cache)},
        300,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "path leaves the archive" in last and "Traceback" not in proc.stderr
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not list((cache / "nemo").glob("*/metadata.json"))


@torch.no_grad()
def test_reward_model_imports_with_its_head_and_round_trips(tmp_path, megatron_single):
    import dataclasses

    import transformers

    from megatron_align.models.checkpoint import checkpoint_kind, read_model_config
    from megatron_align.models.nemo.convert import export_nemo, import_nemo
    from megatron_align.models.reward import build_reward_model, load_reward_weights

    nemo, hf_dir = make_nemo("llama", tmp_path / "rm", tp=2, backend="zarr", rm_attributes=3)
    ckpt = import_nemo(nemo, tmp_path / "ckpt")
    cfg = read_model_config(ckpt)
    assert checkpoint_kind(ckpt) == "reward" and cfg.num_attributes == 3
    model = build_reward_model(dataclasses.replace(cfg, tensor_model_parallel_size=1), precision="32")
    load_reward_weights(ckpt, model, load_head=True)
    model.eval()
    tokens = _tokens()
    rewards = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)  # [B, A] at the last token
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    last = hf(input_ids=tokens, output_hidden_states=True).hidden_states[-1][:, -1]  # [B, H], after the norm
    g = torch.Generator().manual_seed(11)  # the fixture's head
    w, b = torch.randn(3, 64, generator=g) * 0.2, torch.randn(3, generator=g)
    diff = (rewards - (last @ w.t() + b)).abs().max().item()
    assert diff <= 1e-4, f"reward diff {diff:.2e}"
    out = export_nemo(ckpt, tmp_path / "rm_out.nemo", dtype="float32", backend="zarr")
    with tarfile.open(out) as tar:
        exported = yaml.safe_load(tar.extractfile("./model_config.yaml").read())
        names = tar.getnames()
    assert exported["reward_model_type"] == "regression" and exported["regression"]["num_attributes"] == 3
    assert "./model_weights/model.rm_head.weight/.zarray" in names
    assert "./model_weights/model.output_layer.weight/.zarray" in names  # NeMo-Aligner asks for its LM head
    again = import_nemo(out, tmp_path / "again")
    first, second = _weights(ckpt), _weights(again)
    assert sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)


def test_reward_model_training_starts_from_a_nemo_sft_model(imported, tmp_path):
    """The seed's ``pretrained_checkpoint.restore_from_path=/models/llama13b/llama13b.nemo``: the trunk comes
    from the .nemo, a fresh head learns the pairs (seed 004's format)."""
    from tests.e2e.test_reward_model import COMMON, _metrics, _pairs, _run, _write

    nemo, _, _, _ = imported("llama-zarr-tp2-tar")
    train = _write(tmp_path / "pairs_train.jsonl", _pairs(48, 1))
    val = _write(tmp_path / "pairs_val.jsonl", _pairs(16, 2))
    run = tmp_path / "run"
    proc = _run(
        [
            *COMMON,
            f"pretrained_checkpoint.restore_from_path={nemo}",
            "model.reward_model_type=binary_ranking",
            f"model.data.data_prefix={{train: [{train}], validation: [{val}], test: [{val}]}}",
            "++model.micro_batch_size=4",
            "++model.global_batch_size=8",
            "trainer.rm.max_steps=12",
            "trainer.rm.max_epochs=100",
            "trainer.rm.val_check_interval=6",
            "trainer.rm.save_interval=12",
            "model.optim.lr=1e-3",
            "model.optim.sched.name=Constant",
            "model.optim.sched.warmup_steps=0",
            f"exp_manager.explicit_log_dir={run}",
        ],
        {"MEGATRON_ALIGN_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    vals = [r for r in _metrics(run) if "val_loss" in r]
    assert len(vals) == 2 and vals[1]["val_loss"] < vals[0]["val_loss"], vals
    assert (run / "checkpoints" / "megatron_gpt.nemo").is_dir()  # the seed's path: a link to our directory


def test_a_weight_we_cannot_map_is_one_line(tmp_path, megatron_single):
    from megatron_align.models.nemo.convert import import_nemo
    from megatron_align.models.nemo.errors import NemoFormatError
    from megatron_align.models.nemo.weights import write_zarr_array

    nemo, _ = make_nemo("gpt2", tmp_path / "src", tp=1, backend="zarr", tarball=False)
    key = "model.decoder.layers.self_attention.linear_qkv.fp8_scale_inv"  # a TE-only tensor with no home here
    write_zarr_array(nemo / "model_weights" / key, torch.ones(2, 4), [1, 4])
    with pytest.raises(NemoFormatError, match=r"unexpected .*fp8_scale_inv") as err:
        import_nemo(nemo, tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_serve_reward_model_serves_a_nemo_reward_model(tmp_path, megatron_single):
    """The seed's ``serve_reward_model.py rm_model_file=.../megatron_gpt.nemo`` with a NeMo-Aligner regression
    reward model in the file: the served rewards are the imported model's."""
    import requests

    from megatron_align.models.nemo.convert import import_nemo
    from megatron_align.scoring.forward import rewards_of
    from tests.helpers import ROOT
    from tests.servers_common import ServerProcess, free_port, python_cmd

    nemo, _ = make_nemo("llama", tmp_path / "rm", tp=2, backend="torch_dist", rm_attributes=3)
    port, cache = free_port(), tmp_path / "cache"
    server = ServerProcess(
        python_cmd(
            ROOT / "examples" / "nlp" / "gpt" / "serve_reward_model.py",
            f"rm_model_file={nemo}",
            "trainer.num_nodes=1",
            "trainer.devices=1",
            "trainer.precision=32",
            f"inference.port={port}",
        ),
        {"MEGATRON_ALIGN_CACHE": str(cache)},
    )
    try:
        server.wait_ready()
        texts = ["the quick brown fox", "jumps over the lazy dog number 7"]
        r = requests.put(f"http://127.0.0.1:{port}/infer", json={"sentences": texts}, timeout=120)
        assert r.status_code == 200, r.text
        served = torch.tensor(r.json()["rewards"])
    finally:
        server.kill()
    assert served.shape == (2, 3)
    ckpt = import_nemo(nemo, tmp_path / "ckpt")  # the same import, in process, as the reference
    from megatron_align.models.checkpoint import read_model_config
    from megatron_align.models.reward import build_reward_model, load_reward_weights
    from megatron_align.tokenizers import load_tokenizer_from_dir

    model = build_reward_model(read_model_config(ckpt), precision="32")
    load_reward_weights(ckpt, model, load_head=True)
    model.eval()
    tok = load_tokenizer_from_dir(str(ckpt / "tokenizer"))
    expected = rewards_of(model, tok.texts_to_ids(texts), tok.pad_id, 3)
    torch.testing.assert_close(served, torch.as_tensor(expected).float(), atol=1e-4, rtol=0)
