"""A crafted checkpoint never runs code, through any entry point that loads one (issue 12, section 1).

The attack: append the ``torch.save`` bytes of an object whose ``__reduce__`` is ``eval(...)`` to a shard file
and point one ``*._extra_state/shard_*`` byte item of ``weights/.metadata`` at it; the index itself then holds
only allowed record classes. A control shows the payload is live under megatron's own loader; then every entry
point (library call, RM weights, ``convert --to-hf``, both servers, SFT restore, RM restore, resume) must exit
2 with one line that names the file and the refused global, and the marker file must never appear. Damaged
files (malicious ``common.pt``, a ``!!python`` tag in ``model_config.yaml``, a switched backend in
``weights/metadata.json``, a truncated ``.distcp``) are one line too.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, run_in_session
from tests.servers_common import free_port

GEN = ROOT / "examples" / "nlp" / "language_modeling" / "megatron_gpt_eval.py"
RMSERVE = ROOT / "examples" / "nlp" / "gpt" / "serve_reward_model.py"
SFT = ROOT / "examples" / "nlp" / "gpt" / "train_gpt_sft.py"
RM = ROOT / "examples" / "nlp" / "gpt" / "train_reward_model.py"


class _Evil:
    def __init__(self, marker: Path):
        self.code = f"__import__('os').system('touch {marker}')"

    def __reduce__(self):
        return eval, (self.code,)


def craft(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of checkpoint ``src`` whose first ``_extra_state`` byte item is the payload (the issue's
    recipe)."""
    ckpt = Path(shutil.copytree(src, dst))
    weights = ckpt / "weights"
    with open(weights / ".metadata", "rb") as f:
        index = pickle.load(f)  # our own, clean file
    key = next(k for k in sorted(index.storage_data, key=lambda k: k.fqn) if "._extra_state/shard_" in k.fqn)
    buf = io.BytesIO()
    torch.save([_Evil(marker)], buf)
    info = index.storage_data[key]
    shard = weights / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(buf.getvalue())
    index.storage_data[key] = dataclasses.replace(info, offset=offset, length=len(buf.getvalue()))
    with open(weights / ".metadata", "wb") as f:
        pickle.dump(index, f)
    return ckpt


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, megatron_single):
    from tests.servers_common import make_checkpoints

    root = tmp_path_factory.mktemp("crafted")
    clean = make_checkpoints(root / "clean")
    marker = root / "PAYLOAD_RAN"
    return {"clean": clean, "marker": marker, "root": root,
            "policy": craft(clean["policy"], root / "evil_policy", marker),
            "rm": craft(clean["rm"], root / "evil_rm", marker)}


def _one_line_exit_2(proc, marker: Path, needle: str = "refusing to unpickle builtins.eval"):
    time.sleep(0.3)  # a spawned payload would have had time to run
    assert not marker.exists(), "the payload ran"
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-4000:])
    errors = [x for x in proc.stderr.splitlines() if re.match(r"^[a-z ]*error: ", x)]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return errors[0]


def _run(cmd, timeout=300):
    return run_in_session(cmd, timeout=timeout)


def test_control_the_crafted_checkpoint_runs_code_under_megatrons_own_loader(ckpts, tmp_path):
    from megatron.core import dist_checkpointing

    from megatron_align.models.gpt import build_gpt_model

    marker = tmp_path / "control_marker"
    evil = craft(ckpts["clean"]["policy"], tmp_path / "control", marker)
    model = build_gpt_model(ckpts["clean"]["policy_cfg"], vocab_size=ckpts["clean"]["tokenizer"].vocab_size)
    dist_checkpointing.load(model.sharded_state_dict(), str(evil / "weights"))
    assert marker.exists()


def test_library_calls_refuse_it(ckpts):
    from megatron_align.models.checkpoint import CheckpointError, load_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reward import build_reward_model, load_reward_weights

    clean = ckpts["clean"]
    vocab = clean["tokenizer"].vocab_size
    model = build_gpt_model(clean["policy_cfg"], vocab_size=vocab)
    with pytest.raises(CheckpointError, match=r"__0_\d\.distcp: item .*_extra_state.*builtins\.eval") as err:
        load_checkpoint(ckpts["policy"], model)
    assert "\n" not in err.value.user_line()
    rm = build_reward_model(clean["rm_cfg"], vocab_size=vocab)
    for load_head in (True, False):
        with pytest.raises(CheckpointError, match="refusing to unpickle builtins.eval"):
            load_reward_weights(ckpts["rm"], rm, load_head=load_head)
    time.sleep(0.3)
    assert not ckpts["marker"].exists()
    load_checkpoint(clean["policy"], model)  # the clean one still loads
    load_reward_weights(clean["rm"], rm, load_head=True)


def test_convert_to_hf_refuses_it(ckpts, tmp_path):
    proc = _run([sys.executable, "-m", "megatron_align.cli", "convert", "--to-hf", str(ckpts["policy"]),
                 "--out", str(tmp_path / "hf")])
    _one_line_exit_2(proc, ckpts["marker"])
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


def test_generation_and_reward_servers_refuse_it(ckpts):
    common = ["trainer.precision=32", "trainer.devices=1", "trainer.num_nodes=1"]
    gen = _run([sys.executable, str(GEN), f"gpt_model_file={ckpts['policy']}", "server=True",
                "web_server=False", f"port={free_port()}", *common])
    _one_line_exit_2(gen, ckpts["marker"])
    rm = _run([sys.executable, str(RMSERVE), f"rm_model_file={ckpts['rm']}", f"inference.port={free_port()}",
               *common])
    _one_line_exit_2(rm, ckpts["marker"])


def _sft_args(ckpts, run_dir, restore):
    data = ROOT / "tests" / "data" / "dummy-sft.jsonl"
    return [sys.executable, str(SFT), f"model.restore_from_path={restore}", "model.data.chat=True",
            f"model.data.train_ds.file_path={data}", f"model.data.validation_ds.file_path={data}",
            "model.data.train_ds.max_seq_length=256", "model.data.validation_ds.max_seq_length=256",
            "model.data.train_ds.micro_batch_size=1", "model.data.train_ds.global_batch_size=1",
            "model.data.validation_ds.micro_batch_size=1", "model.data.validation_ds.global_batch_size=1",
            "trainer.sft.max_steps=2", "trainer.precision=32", "exp_manager.create_tensorboard_logger=False",
            f"exp_manager.explicit_log_dir={run_dir}"]


def test_sft_restore_and_resume_refuse_it(ckpts, tmp_path):
    proc = _run(_sft_args(ckpts, tmp_path / "sft", ckpts["policy"]))
    _one_line_exit_2(proc, ckpts["marker"])
    saved = tmp_path / "sft" / "checkpoints"
    assert not saved.exists() or not any(saved.iterdir())

    # resume: a clean base to restore, but the run directory's newest checkpoint is the crafted one
    run = tmp_path / "resume"
    shutil.copytree(ckpts["policy"], run / "checkpoints" / "step=2")
    proc = _run(_sft_args(ckpts, run, ckpts["clean"]["policy"]))
    line = _one_line_exit_2(proc, ckpts["marker"])
    assert "step=2" in line


def test_rm_restore_refuses_it(ckpts, tmp_path):
    data = ROOT / "tests" / "data" / "test-rm.jsonl"
    proc = _run([sys.executable, str(RM), f"pretrained_checkpoint.restore_from_path={ckpts['policy']}",
                 "model.reward_model_type=regression", "model.regression.num_attributes=9",
                 f"model.data.data_prefix={{train: [{data}], validation: [{data}]}}",
                 "++model.micro_batch_size=1", "++model.global_batch_size=1", "trainer.rm.max_steps=1",
                 "trainer.precision=32", "exp_manager.create_tensorboard_logger=False",
                 f"exp_manager.explicit_log_dir={tmp_path / 'rm'}"])
    _one_line_exit_2(proc, ckpts["marker"])


# ----------------------------------------------------------------------------------------------------------
# damaged or forged files other than the byte items: one line each (library call and the convert CLI)
# ----------------------------------------------------------------------------------------------------------
def _common_pt(ckpt: Path, marker: Path):
    buf = io.BytesIO()
    torch.save({"x": _Evil(marker)}, buf)
    (ckpt / "weights" / "common.pt").write_bytes(buf.getvalue())


def _python_tag(ckpt: Path, marker: Path):
    path = ckpt / "model_config.yaml"
    path.write_text(path.read_text() + f"evil: !!python/object/apply:os.system ['touch {marker}']\n")


def _backend(ckpt: Path, marker: Path):
    path = ckpt / "weights" / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "sharded_backend": "zarr"}))


def _truncated(ckpt: Path, marker: Path):
    shard = ckpt / "weights" / "__0_1.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _bad_index(ckpt: Path, marker: Path):
    (ckpt / "weights" / ".metadata").write_bytes(b"\x80\x04garbage")


def _outside(ckpt: Path, marker: Path):
    path = ckpt / "weights" / ".metadata"
    index = pickle.loads(path.read_bytes())
    key = next(iter(index.storage_data))
    index.storage_data[key] = dataclasses.replace(index.storage_data[key],
                                                  relative_path="../../model_config.yaml")
    path.write_bytes(pickle.dumps(index))


DAMAGE = {"common_pt": (_common_pt, "common.pt: refusing to unpickle"),
          "python_tag": (_python_tag, "model_config.yaml"),
          "backend": (_backend, "sharded_backend is 'zarr'"),
          "truncated": (_truncated, "__0_1.distcp: truncated"),
          "bad_index": (_bad_index, ".metadata: unreadable checkpoint index"),
          "outside": (_outside, "points outside the checkpoint")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_one_line(ckpts, tmp_path, damage, capsys):
    from megatron_align.cli.convert import convert_main
    from megatron_align.models.checkpoint import CheckpointError, load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model

    make, needle = DAMAGE[damage]
    marker = tmp_path / "marker"
    ckpt = Path(shutil.copytree(ckpts["clean"]["policy"], tmp_path / "ckpt"))
    make(ckpt, marker)
    model = build_gpt_model(ckpts["clean"]["policy_cfg"], vocab_size=ckpts["clean"]["tokenizer"].vocab_size)
    with pytest.raises(CheckpointError, match=None) as err:
        read_model_config(ckpt)
        load_checkpoint(ckpt, model)
    assert needle in str(err.value) and "\n" not in err.value.user_line()
    with pytest.raises(SystemExit) as exit_:
        convert_main(["--to-hf", str(ckpt), "--out", str(tmp_path / "hf")])
    assert exit_.value.code == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not marker.exists()


def test_no_module_bypasses_the_safe_reader():
    """Only models/dcp_reader.py calls dist_checkpointing.load; every torch.load in the package says
    weights_only=True."""
    offenders = []
    for path in sorted((ROOT / "megatron_align").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if "dist_checkpointing.load(" in text and rel.name != "dcp_reader.py":
            offenders.append(f"{rel}: dist_checkpointing.load")
        for i, line in enumerate(text.splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{rel}:{i}: {line.strip()}")
            if "pickle.load(" in line or "pickle.loads(" in line:
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert offenders == []
