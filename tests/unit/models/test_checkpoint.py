"""Checkpoint directories: weights roundtrip, exact resume (optimizer + RNG), crash safety, and pickle safety.

In-process at TP=1/PP=1 (the ``megatron_single`` fixture), except the crash test, which kills a separate
writer process between its shards and its commit (the ``MEGATRON_ALIGN_TEST_PAUSE_BEFORE_COMMIT`` hook).
"""

import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from megatron_align.models.checkpoint import (
    INCOMPLETE_SUFFIX,
    CheckpointError,
    is_complete_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_metadata,
    read_model_config,
    save_checkpoint,
)
from megatron_align.models.dcp_reader import verify_safe_to_load
from megatron_align.models.gpt import build_gpt_model
from megatron_align.training.schedule import forward_backward
from megatron_align.training.setup import prepare_for_training
from tests.helpers import _clean_env, positions, tiny_gpt2, tiny_llama, tokens

B, S, V = 2, 16, 1000


def _logits(model, tok):
    model.eval()
    with torch.no_grad():
        return model(tok, positions(tok), None)[..., :V]


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory, megatron_single):
    """One complete weights-only llama checkpoint (step 3) and the logits of the model that wrote it."""
    d = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_llama()
    model = build_gpt_model(cfg, parallel_output=False)
    tok_dir = d / "tok_src"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    path = save_checkpoint(d / "step_3", model, cfg, tokenizer_dir=tok_dir, train_state={"step": 3, "x": 1})
    return {"path": path, "cfg": cfg, "logits": _logits(model, tokens(B, S, V, seed=1))}


# ----------------------------------------------------------------------------------------------------------
# weights, metadata, model config, latest
# ----------------------------------------------------------------------------------------------------------
def test_weights_roundtrip_and_metadata(base_ckpt):
    path, cfg = base_ckpt["path"], base_ckpt["cfg"]
    assert is_complete_checkpoint(path) and not path.with_name(path.name + INCOMPLETE_SUFFIX).exists()
    fresh = build_gpt_model(cfg, parallel_output=False)
    tok = tokens(B, S, V, seed=1)
    assert not torch.equal(_logits(fresh, tok), base_ckpt["logits"])  # a different init before loading
    train_state = load_checkpoint(path, fresh)
    assert torch.equal(_logits(fresh, tok), base_ckpt["logits"])
    assert train_state == {"step": 3, "x": 1}

    assert read_model_config(path) == cfg
    meta = read_metadata(path)
    assert meta["complete"] is True and meta["step"] == 3 and meta["format"] == "megatron_align"
    layout = (meta["tensor_model_parallel_size"], meta["pipeline_model_parallel_size"], meta["world_size"])
    assert layout == (1, 1, 1)
    assert meta["has_optimizer"] is False and meta["has_rng"] is False
    assert (path / "tokenizer" / "tokenizer.json").is_file()


def test_weights_roundtrip_tied_embeddings(tmp_path, megatron_single):
    cfg = tiny_gpt2()
    model = build_gpt_model(cfg, parallel_output=False)
    tok = tokens(B, S, V, seed=2)
    ref = _logits(model, tok)
    save_checkpoint(tmp_path / "gpt2", model, cfg)
    fresh = build_gpt_model(cfg, parallel_output=False)
    assert load_checkpoint(tmp_path / "gpt2", fresh) == {}  # weights-only: no train_state
    assert torch.equal(_logits(fresh, tok), ref)
    assert read_model_config(tmp_path / "gpt2").share_embeddings_and_output_weights is True
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path / "gpt2", fresh, optimizer=object())


def _copy_with(src, dst, **meta_updates):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta.update(meta_updates)
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def test_latest_checkpoint_picks_highest_complete_step(base_ckpt, tmp_path):
    src = base_ckpt["path"]
    run = tmp_path / "run"
    run.mkdir()
    assert latest_checkpoint(run) is None and latest_checkpoint(tmp_path / "missing") is None
    for step in (2, 7, 5):
        _copy_with(src, run / f"step_{step}", step=step)
    (run / "notes.txt").write_text("not a checkpoint")
    # higher steps that must all be skipped
    _copy_with(src, run / f"step_9{INCOMPLETE_SUFFIX}", step=9)
    (_copy_with(src, run / "step_10", step=10) / "metadata.json").unlink()
    _copy_with(src, run / "step_11", step=11, complete=False)
    (_copy_with(src, run / "step_12", step=12) / "metadata.json").write_text('{"complete": tr')  # torn write
    shutil.rmtree(_copy_with(src, run / "step_13", step=13) / "weights")
    assert latest_checkpoint(run) == run / "step_7"
    for name in (f"step_9{INCOMPLETE_SUFFIX}", "step_10", "step_11", "step_12", "step_13"):
        assert not is_complete_checkpoint(run / name), name


# ----------------------------------------------------------------------------------------------------------
# exact resume: optimizer state + train_state + RNG
# ----------------------------------------------------------------------------------------------------------
def _batch(seed):
    tok = tokens(B, S, V, seed=seed)
    mask = torch.ones(B, S)
    mask[:, -1] = 0
    return {"tokens": tok, "labels": torch.roll(tok, -1, dims=1), "loss_mask": mask,
            "position_ids": positions(tok)}


def _train_step(ddp, optimizer, seed):
    ddp.train()
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    res = forward_backward([ddp], [_batch(seed)], 1, S, B)
    ok, _, _ = optimizer.step()
    assert ok
    return res["loss_sum"] / res["num_tokens"]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _host_draws():
    return random.random(), float(np.random.rand())


@pytest.mark.parametrize("optim_name, precision", [
    ("distributed_fused_adam", "32"), ("adamw", "32"), ("distributed_fused_adam", "bf16"),
    ("adamw", "bf16"),
])
def test_resume_from_optimizer_and_rng_equals_uninterrupted(tmp_path, megatron_single, optim_name, precision):
    # dropout on, so step 3 depends on the RNG state as well as on weights and Adam moments
    cfg = tiny_llama(hidden_dropout=0.1, attention_dropout=0.1)
    cfg.optim.name = optim_name
    cfg.optim.lr = 1e-3
    cfg.optim.weight_decay = 0.1  # a dummy optimizer step while loading would show as shrunken weights

    def build():
        model = build_gpt_model(cfg, precision=precision)
        ddp, optimizer = prepare_for_training(model, cfg.optim, precision)
        return model, ddp, optimizer

    model, ddp, optimizer = build()
    for seed in (10, 11):
        _train_step(ddp, optimizer, seed)
    save_checkpoint(tmp_path / "step_2", ddp, cfg, optimizer=optimizer,
                    train_state={"step": 2, "consumed": 4}, save_rng=True)
    draws = _host_draws()
    loss3 = _train_step(ddp, optimizer, 12)
    params3 = _params(model)

    torch.manual_seed(999)  # the fresh model starts from other weights and another RNG position
    model2, ddp2, optimizer2 = build()
    train_state = load_checkpoint(tmp_path / "step_2", ddp2, optimizer=optimizer2, load_rng=True)
    assert train_state == {"step": 2, "consumed": 4}
    assert _host_draws() == draws  # python and numpy RNG restored
    assert _train_step(ddp2, optimizer2, 12) == pytest.approx(loss3, abs=1e-7)
    for name, p in model2.named_parameters():
        torch.testing.assert_close(p.detach(), params3[name], atol=1e-7, rtol=0, msg=name)

    # control: without the RNG state the same step draws other dropout masks, so the RNG restore matters
    model3, ddp3, optimizer3 = build()
    load_checkpoint(tmp_path / "step_2", ddp3, optimizer=optimizer3, load_rng=False)
    assert _train_step(ddp3, optimizer3, 12) != pytest.approx(loss3, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# crash safety
# ----------------------------------------------------------------------------------------------------------
WRITER = """
import sys

if __name__ == "__main__":  # dist_checkpointing's helper process re-imports __main__
    from megatron_align.distributed import start
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from tests.helpers import tiny_llama

    start(1, 1)
    cfg = tiny_llama()
    save_checkpoint(sys.argv[1], build_gpt_model(cfg), cfg, train_state={"step": 2})
    print("COMMITTED", flush=True)
"""


def _wait_for(cond, proc, log, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"writer exited early (rc {proc.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    pytest.fail(f"writer did not reach the commit pause in {timeout}s:\n{log.read_text()[-4000:]}")


def test_killed_writer_leaves_only_an_incomplete_dir(tmp_path, megatron_single):
    run = tmp_path / "run"
    cfg = tiny_llama()
    model = build_gpt_model(cfg, parallel_output=False)
    save_checkpoint(run / "step_1", model, cfg, train_state={"step": 1})

    script, log = tmp_path / "writer.py", tmp_path / "writer.log"
    script.write_text(WRITER)
    tmp = run / f"step_2{INCOMPLETE_SUFFIX}"
    env = dict(_clean_env(), MEGATRON_ALIGN_TEST_PAUSE_BEFORE_COMMIT="30")
    with open(log, "w") as out:
        # its own session, so that the kill reaches dist_checkpointing's helper process too
        proc = subprocess.Popen([sys.executable, str(script), str(run / "step_2")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # shards written and model_config.yaml (written just before the pause) present: inside the pause
        _wait_for(lambda: (tmp / "weights").is_dir() and any((tmp / "weights").iterdir())
                  and (tmp / "model_config.yaml").is_file(), proc, log, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert "COMMITTED" not in log.read_text()

    assert tmp.is_dir() and not (run / "step_2").exists()
    assert not (tmp / "metadata.json").exists()
    assert not is_complete_checkpoint(tmp)
    assert latest_checkpoint(run) == run / "step_1"
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint .*use an earlier one or delete it"):
        load_checkpoint(tmp, model)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(run / "step_2", model)

    # a final directory whose metadata.json is gone is not complete either, whatever its step
    step3 = _copy_with(run / "step_1", run / "step_3", step=3)
    assert latest_checkpoint(run) == step3
    (step3 / "metadata.json").unlink()
    assert not is_complete_checkpoint(step3)
    assert latest_checkpoint(run) == run / "step_1"
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_checkpoint(step3, model)

    # saving again over the leftover replaces it and commits
    save_checkpoint(run / "step_2", model, cfg, train_state={"step": 2})
    assert not tmp.exists() and latest_checkpoint(run) == run / "step_2"


# ----------------------------------------------------------------------------------------------------------
# pickle safety
# ----------------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _global_reduce(module: str, name: str, args: tuple) -> bytes:
    """A protocol-4 pickle calling ``module`` + (dotted) ``name`` on ``args``, as a forger would write it."""
    out = b"\x80\x04"
    for s in (module, name):
        raw = s.encode()
        out += b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    out += b"\x93"  # STACK_GLOBAL
    out += pickle.dumps(args, protocol=4)[2:-1]  # the args tuple without PROTO / STOP
    return out + b"R."  # REDUCE, STOP


def _malicious(kind: str, marker) -> bytes:
    if kind == "os.system":
        return pickle.dumps(_Payload(os.system, f"touch {marker}"))
    if kind == "eval":
        return pickle.dumps(_Payload(eval, f"open({str(marker)!r}, 'w').close()"))
    if kind == "dotted-popen":  # a real class reached by walking attributes from an allowed module
        return _global_reduce("torch.distributed.checkpoint.metadata",
                              "torch.utils.cpp_extension.subprocess.Popen", (["touch", str(marker)],))
    if kind == "reexported-fileio":  # a type defined elsewhere but importable from an allowed module
        return _global_reduce("torch.distributed.checkpoint.filesystem", "io.FileIO", (str(marker), "w"))
    raise ValueError(kind)


KINDS = ["os.system", "eval", "dotted-popen", "reexported-fileio"]


@pytest.mark.parametrize("kind", KINDS)
def test_payloads_are_live_without_the_allow_list(tmp_path, kind):
    # control: a plain pickle.load of each forged file does run its payload
    import torch.utils.cpp_extension  # noqa: F401 - makes the dotted Popen path resolvable, as in a real job

    marker = tmp_path / "payload_ran"
    obj = pickle.loads(_malicious(kind, marker))
    if isinstance(obj, subprocess.Popen):
        obj.wait(timeout=30)
    elif isinstance(obj, io.FileIO):
        obj.close()
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_unsafe_pickle_is_refused_before_it_runs(base_ckpt, tmp_path, kind):
    import torch.utils.cpp_extension  # noqa: F401

    ckpt = shutil.copytree(base_ckpt["path"], tmp_path / "evil")
    marker = tmp_path / "payload_ran"
    (ckpt / "weights" / ".metadata").write_bytes(_malicious(kind, marker))
    model = build_gpt_model(base_ckpt["cfg"], parallel_output=False)
    before = _params(model)
    with pytest.raises(CheckpointError, match="refusing to unpickle") as err:
        load_checkpoint(ckpt, model)
    assert ".metadata" in str(err.value)
    time.sleep(0.2)  # a spawned payload would have had time to run
    assert not marker.exists()
    assert all(torch.equal(p, before[n]) for n, p in _params(model).items())  # nothing was loaded


def test_real_metadata_passes_the_allow_list(base_ckpt):
    verify_safe_to_load(base_ckpt["path"] / "weights")
    with open(base_ckpt["path"] / "weights" / ".metadata", "rb") as f:
        assert type(pickle.load(io.BytesIO(f.read()))).__name__ in ("Metadata", "MCoreMetadata")
