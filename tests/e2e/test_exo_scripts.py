"""The EXO repository's five stage scripts in sequence (``examples/exo/*.sh``), as its README runs them, on a
tiny random Llama built with transformers and tiny data in the repository's JSON-array formats:

SFT -> sample K=4 -> reward model -> label -> exo-rw; outputs where and how the repository writes them; the
exported EXO checkpoint loads in transformers and its logits match ours; pref_to_rw as the repository's.
"""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

transformers = pytest.importorskip("transformers")

EXO = ROOT / "examples" / "exo"
TINY = ["trainer.precision=32", "exp_manager.create_tensorboard_logger=False"]


def _sh(cwd, script, *args):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(["bash", str(EXO / script), *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=900)


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=4))


def _data(root):
    """Words w3..w62 of the tiny tokenizer: 3-word prompts; chosen answers use even words, rejected odd."""
    rng = random.Random(0)

    def words(parity, n):
        return " " + " ".join(f"w{2 * rng.randrange(2, 30) + parity}" for _ in range(n))

    def split(n):
        return [{"prompt": " ".join(f"w{rng.randrange(3, 60)}" for _ in range(3)), "chosen": words(0, 4),
                 "rejected": words(1, 4)} for _ in range(n)]

    train, test = split(8), split(4)
    for name, keys in (("sft", ("prompt", "chosen")), ("pref", ("prompt", "chosen", "rejected"))):
        _write(root / "data" / "toy" / name / "train.json", [{k: r[k] for k in keys} for r in train])
        _write(root / "data" / "toy" / name / "test.json", [{k: r[k] for k in keys} for r in test])
    return root / "data" / "toy"


@pytest.mark.slow
def test_exo_stage_scripts_in_sequence(tmp_path, megatron_single):
    from tests.e2e.test_hf_parity import (
        VOCAB,
        hf_reference_logits,
        make_tiny_hf,
        megatron_logits,
        random_tokens,
    )

    init = make_tiny_hf("llama", tmp_path / "init_hf")
    data = _data(tmp_path)

    sft = _sh(tmp_path, "train_sft.sh", "tiny", init, "sft", "toy/sft", data / "sft", *TINY,
              "trainer.sft.max_steps=3", "model.data.train_ds.global_batch_size=4",
              "model.data.train_ds.micro_batch_size=2", "model.data.validation_ds.global_batch_size=4",
              "model.data.validation_ds.micro_batch_size=2", "model.data.train_ds.max_seq_length=64",
              "model.data.validation_ds.max_seq_length=64", "model.optim.lr=1e-3")
    assert sft.returncode == 0, sft.stderr[-5000:]
    sft_dir = tmp_path / "models" / "tiny_toy" / "sft"
    assert (sft_dir / "config.json").is_file()

    for split in ("train", "test"):
        inf = _sh(tmp_path, "inference_sft.sh", "0", f"toy/sft:{data / 'sft'}", split, sft_dir,
                  "max_new_tokens=6")
        assert inf.returncode == 0, inf.stderr[-5000:]
    samples = json.loads((data / "sft_sft" / "train.json").read_text())
    assert len(samples) == 8 and all(len(s["completions"]) == 4 for s in samples)
    assert samples[0]["prompt"] == json.loads((data / "sft" / "train.json").read_text())[0]["prompt"]
    assert len({c for s in samples for c in s["completions"]}) > 8  # distinct draws at temperature 0.8

    rm = _sh(tmp_path, "train_rm.sh", "tiny", init, "rm", "toy/pref", data / "pref", *TINY,
             "trainer.rm.max_steps=3", "model.global_batch_size=4", "model.micro_batch_size=2",
             "model.data.seq_length=64", "trainer.rm.val_check_interval=3")
    assert rm.returncode == 0, rm.stderr[-5000:]
    rm_dir = tmp_path / "models" / "tiny_toy" / "rm"
    for split in ("train", "test"):
        lab = _sh(tmp_path, "inference_rm.sh", "0", data / "sft_sft", split, rm_dir)
        assert lab.returncode == 0, lab.stderr[-5000:]
    # the repository's str.replace("sft", "rw") on the path: data/toy/sft_sft -> data/toy/rw_rw
    labelled = json.loads((data / "rw_rw" / "train.json").read_text())
    assert [s["completions"] for s in labelled] == [s["completions"] for s in samples]
    assert all(len(s["rewards"]) == 4 and all(isinstance(r, float) for r in s["rewards"]) for s in labelled)

    exo = _sh(tmp_path, "train_exo.sh", "tiny", sft_dir, "align", "toy/rw", data / "rw_rw", "exo-rw", 2,
              *TINY,
              "trainer.dpo.max_steps=3", "model.global_batch_size=2", "model.micro_batch_size=1",
              "model.data.seq_length=64", "model.optim.lr=1e-3", "trainer.dpo.val_check_interval=3")
    assert exo.returncode == 0, exo.stderr[-5000:]
    out = tmp_path / "models" / "tiny_toy" / "align_exo-rw_nc2"
    rows = [json.loads(x) for x in
            (tmp_path / "models" / "tiny_toy" / ".align_exo-rw_nc2.work" / "run" / "metrics.jsonl")
            .read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("kl_pf_pr" in r for r in rows)

    # the exported checkpoint loads in transformers and gives our logits
    from megatron_align.models.checkpoint import latest_checkpoint

    work = tmp_path / "models" / "tiny_toy" / ".align_exo-rw_nc2.work"
    final = latest_checkpoint(work / "run" / "checkpoints")
    tokens = random_tokens()
    ours = megatron_logits(final, tokens)[..., :VOCAB]
    theirs = hf_reference_logits(out, tokens)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    before = hf_reference_logits(sft_dir, tokens)
    assert not torch.allclose(before, theirs, atol=1e-3)  # EXO changed the SFT model


def test_pref_to_rw_writes_the_repository_format(tmp_path):
    data = _data(tmp_path)
    proc = subprocess.run([sys.executable, str(EXO / "pref_to_rw.py"), str(data / "pref")], text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pref = json.loads((data / "pref" / "test.json").read_text())
    p2r = json.loads((data / "pref_p2r" / "test.json").read_text())
    assert p2r == [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]], "rewards": [1.0, 0.0]}
                   for r in pref]
    bad = subprocess.run([sys.executable, str(EXO / "pref_to_rw.py"), str(data / "sft")], text=True,
                         capture_output=True, timeout=120)
    assert bad.returncode == 2 and "exo error:" in bad.stderr and "rejected: missing" in bad.stderr
