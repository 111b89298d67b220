"""Shared test helpers: tiny model configs, deterministic tokens, and launching 2-rank jobs.

Two launchers are supported for multi-process tests, as users start jobs:
- ``torchrun`` (``python -m torch.distributed.run``): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* variables;
- ``slurm``: plain processes given only SLURM_* variables (what ``srun`` sets), no torchrun.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from megatron_align.config.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "tests" / "distributed" / "workers"

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def tiny_llama(**kw) -> ModelConfig:
    """Llama-style: RMSNorm, SwiGLU, RoPE (theta 50000), GQA 4 heads / 2 groups, untied, vocab needs
    padding."""
    base = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                normalization="rmsnorm", activation="fast-swiglu", position_embedding_type="rope",
                rotary_base=50000.0, vocab_size=1000, max_position_embeddings=64, encoder_seq_length=64,
                share_embeddings_and_output_weights=False, init_method_std=0.05)
    base.update(kw)
    return ModelConfig(**base)


def tiny_gpt2(**kw) -> ModelConfig:
    """GPT-2-style: LayerNorm, tanh-GELU, learned positions, biases, tied embeddings, MHA."""
    base = dict(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                num_query_groups=None, normalization="layernorm", activation="gelu-tanh",
                position_embedding_type="learned_absolute", bias=True, vocab_size=1000,
                max_position_embeddings=64, encoder_seq_length=64,
                share_embeddings_and_output_weights=True, init_method_std=0.05)
    base.update(kw)
    return ModelConfig(**base)


def tokens(batch: int, seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Deterministic random token ids ``[B, S]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def positions(tok: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, S]`` for unpadded sequences."""
    return torch.arange(tok.shape[1]).unsqueeze(0).expand(tok.shape[0], -1).contiguous()


def _free_port(lo: int = 0, hi: int = 0) -> int:
    for port in range(lo, hi) if lo else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_in_session(cmd: list[str], env_extra: dict | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session with output to files (a SIGKILLed trainer can leave dist_checkpointing's
    spawned helper alive holding pipes), then kill whatever is left of its process group."""
    import signal
    import tempfile

    env = {**_clean_env(), **(env_extra or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=err, text=True,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, rc, out.read(), err.read())


def run_ranks(script: str | Path, args: list[str], nproc: int = 2, launcher: str = "torchrun",
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nproc`` local ranks; returns the completed process (stdout+stderr merged)."""
    script = str(script)
    env = _clean_env()
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), script, *args]
        return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
    if launcher != "slurm":
        raise ValueError(launcher)
    # srun sets these; the master port is derived from SLURM_JOB_ID by megatron_align.distributed.launch.
    job_id = _free_port(15000, 35000) - 15000
    procs = []
    for rank in range(nproc):
        penv = dict(env, SLURM_PROCID=str(rank), SLURM_NTASKS=str(nproc), SLURM_LOCALID=str(rank),
                    SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=str(job_id), SLURM_NNODES="1")
        procs.append(subprocess.Popen([sys.executable, script, *args], env=penv, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs, rc = [], 0
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
        rc = rc or p.returncode
    return subprocess.CompletedProcess(procs[0].args, rc, "\n".join(outs), None)


def listening_addresses(pid: int) -> list[str]:
    """The local addresses (``ip:port``) of every TCP socket that process ``pid`` holds in LISTEN state, read
    from /proc: its file descriptors give the socket inodes, /proc/PID/net/tcp{,6} their addresses."""
    import ipaddress

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc writes each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(f"{ipaddress.ip_address(raw)}:{int(hex_port, 16)}")
    return found


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def seed_command(name: str) -> list[list[str]]:
    """The commands of ``tests/data/<name>`` (a seed document's commands, verbatim, blank-line separated),
    each split into words as the shell would."""
    import shlex

    text = (ROOT / "tests" / "data" / name).read_text()
    return [shlex.split(block.replace("\\\n", " ")) for block in text.strip().split("\n\n")]


def re_rooted(words: list[str], values: dict, by_suffix: dict | None = None) -> list[str]:
    """A seed command's ``key=value`` arguments in order, every key kept: a key of ``values`` (``++`` prefix
    ignored) or ending with a suffix of ``by_suffix`` takes that value instead (paths and sizes)."""
    out = []
    for arg in words[2:]:
        key, _, value = arg.partition("=")
        bare = key.lstrip("+")
        if bare in values:
            value = values[bare]
        else:
            value = next((v for s, v in (by_suffix or {}).items() if bare.endswith(s)), value)
        out.append(f"{key}={value}")
    return out
