"""Process start: one entry for torchrun, srun and plain single-process runs.

``start(tp, pp, seed)`` reads the launcher's environment, initialises ``torch.distributed`` (NCCL when CUDA is
present, gloo otherwise), switches on the CPU compatibility layer and the CPU malloc tuning
(``cpu_malloc.py``) when there is no GPU, builds megatron's parallel groups and seeds every RNG.
``shutdown()`` undoes it.

Launchers understood (first match wins):
- torchrun / torch.distributed.run: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``.
- Slurm ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the master is the first host of
  ``SLURM_JOB_NODELIST`` (or ``SLURM_NODELIST``); the port is ``MASTER_PORT`` if set, else derived from
  ``SLURM_JOB_ID`` so that concurrent jobs on one node do not collide.
- nothing: a single process on loopback with a free port.

The rendezvous store (torch.distributed's key-value store, which anyone who reaches it can read and write):
- one process: an in-process ``HashStore``; no socket is opened for it.
- several processes on one node (``single_node``): rank 0 listens on 127.0.0.1 only and every rank connects
  there, whatever ``MASTER_ADDR`` says; gloo / NCCL are pointed at the loopback interface too
  (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` default to ``lo``; a value you set wins).
- several nodes: rank 0 listens on the address ``MASTER_ADDR`` resolves to (not on every interface), so the
  store is reachable from that network: keep it a private cluster network.
- under torchrun the store belongs to torchrun's agent process (``TORCHELASTIC_USE_AGENT_STORE``) and the
  ranks only connect to it; where it listens is torchrun's choice (all interfaces).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import socket
from datetime import timedelta
from typing import Optional

import numpy as np
import torch

from megatron_align.distributed import cpu_compat, cpu_malloc

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "slurm" | "single"
    single_node: bool = True  # every rank runs on this host


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist (``node[01-03,07],gpu-a``) into host names, in order."""
    hosts: list[str] = []
    # split on commas that are not inside brackets
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                width = len(lo)
                for i in range(int(lo), int(hi) + 1):
                    hosts.extend(expand_hostlist(f"{prefix}{i:0{width}d}{suffix}"))
            else:
                hosts.extend(expand_hostlist(f"{prefix}{r}{suffix}"))
    return hosts


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_launch_env(environ: Optional[dict] = None) -> LaunchEnv:
    """Read the launcher's variables (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
            single_node=int(env.get("LOCAL_WORLD_SIZE", -1)) == int(env["WORLD_SIZE"]),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        master = env.get("MASTER_ADDR") or expand_hostlist(nodelist)[0]
        port = env.get("MASTER_PORT")
        if port is None:
            port = 15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=master,
            master_port=int(port),
            launcher="slurm",
            single_node=int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", 0)) or 0) == 1,
        )
    return LaunchEnv(0, 1, 0, "127.0.0.1", _free_port(), "single")


def rendezvous_store(env: LaunchEnv, timeout: timedelta) -> torch.distributed.Store:
    """The key-value store of this job (see the module docstring for where it listens)."""
    if env.world_size == 1:
        return torch.distributed.HashStore()
    host = "127.0.0.1" if env.single_node else env.master_addr
    if env.rank != 0:
        return torch.distributed.TCPStore(host, env.master_port, env.world_size, False, timeout=timeout)
    family, _, _, _, address = socket.getaddrinfo(host, env.master_port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(max(128, env.world_size))
    # the store takes the listening socket over (libuv backend) and closes it when it is destroyed
    store = torch.distributed.TCPStore(host, env.master_port, env.world_size, True, timeout=timeout,
                                       wait_for_workers=False, master_listen_fd=listener.detach())
    return store


def seed_all(seed: int, tp_rank: int) -> None:
    """Seed Python, numpy and torch identically on every rank, then megatron's per-TP-rank RNG tracker.

    The identical CPU seed matters: with CPU initialisation, replicated parameters must agree across ranks.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if cpu_compat.cpu_compat_active():
        cpu_compat.seed_rng_tracker(seed, tp_rank)
    else:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def start(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 30,
) -> LaunchEnv:
    """Initialise torch.distributed and megatron's parallel groups for this process; idempotent."""
    from megatron.core import parallel_state as ps

    env = detect_launch_env()
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        cpu_compat.enable_cpu_compat()
        cpu_malloc.tune_cpu_malloc()
    if not torch.distributed.is_initialized():
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        backend = "nccl" if use_cuda else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        if env.single_node:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent holds the store
            store_args = {"init_method": f"tcp://{env.master_addr}:{env.master_port}"}
        else:
            store_args = {"store": rendezvous_store(env, timeout)}
        torch.distributed.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                             timeout=timeout, **store_args)
        logger.info(
            "rank %d/%d (local %d) started by %s, backend %s",
            env.rank, env.world_size, env.local_rank, env.launcher, backend,
        )
    if ps.model_parallel_is_initialized():
        if (
            ps.get_tensor_model_parallel_world_size() != tensor_model_parallel_size
            or ps.get_pipeline_model_parallel_world_size() != pipeline_model_parallel_size
        ):
            ps.destroy_model_parallel()
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            distributed_timeout_minutes=timeout_minutes,
            create_gloo_process_groups=use_cuda,
        )
    seed_all(seed, ps.get_tensor_model_parallel_rank())
    return env


def compute_device() -> torch.device:
    """Where this rank's model, batches and default-group collectives live: the current CUDA device (NCCL
    only reduces CUDA tensors), else the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Destroy megatron's groups and the default process group."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
