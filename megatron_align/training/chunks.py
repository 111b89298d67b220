"""Durable, resumable work split into chunks over data-parallel replicas, for the stages that produce data
(the SteerLM 2.0 builder, the offline sampler and labeler).

- ``ChunkDir``: ``<work>/<phase>/<chunk>.json``, one file per finished chunk, written whole (temporary file,
  fsync, rename): a chunk is there complete or not at all, so a killed run redoes only unwritten chunks.
- ``ReplicaLayout``: megatron's groups for TP x PP model replicas; chunk c belongs to replica c mod DP, the
  first rank of each replica writes its chunks, global rank 0 the final output; ``barrier`` / ``any_rank``
  keep the ranks in step (a model is loaded by all ranks or none).
- ``read_done`` / ``write_done``: an iteration's done marker (``done.json`` naming its final checkpoint), for
  the loops of rounds (SteerLM 2.0 rounds, the offline loop) that skip finished iterations.
- ``open_work_dir``: the work directory with a manifest of what it holds (config, inputs); another run's
  directory is refused with one line, on every rank alike.
- ``kill_after_chunk``: the test hook ``MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK=phase:chunk`` (SIGKILL right
  after that chunk is written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_align.config.errors import ConfigError


class ChunkDir:
    """``<work>/<phase>/<chunk>.json`` (module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, c: int) -> Path:
        return self.path / f"{c:06d}.json"

    def done(self, c: int) -> bool:
        return self._file(c).is_file()

    def write(self, c: int, value) -> None:
        tmp = self.path / f".{c:06d}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(json.dumps(value))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._file(c))

    def read(self, c: int):
        return json.loads(self._file(c).read_text())


def kill_after_chunk(phase: str, chunk: int) -> None:
    """Test hook: SIGKILL right after chunk ``MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK`` = ``phase:chunk``."""
    if os.environ.get("MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK") == f"{phase}:{chunk}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class ReplicaLayout:
    """This rank's place among TP x PP model replicas (module docstring)."""

    def __init__(self, tensor_model_parallel_size: int, pipeline_model_parallel_size: int, seed: int):
        import torch
        from megatron.core import parallel_state as ps

        from megatron_align.distributed import start

        start(tensor_model_parallel_size, pipeline_model_parallel_size, seed=seed)
        self.replica, self.replicas = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0
        self.rank0 = torch.distributed.get_rank() == 0
        self._dist = torch.distributed

    def barrier(self) -> None:
        self._dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is on any."""
        import torch

        from megatron_align.distributed.launch import compute_device

        t = torch.tensor([int(flag)], device=compute_device())  # NCCL reduces device tensors only
        self._dist.all_reduce(t)
        return bool(t.item())

    def save(self, chunks: ChunkDir, phase: str, c: int, value) -> None:
        """Chunk ``c`` of ``phase`` is finished: the replica's first rank writes it (then the test hook)."""
        if self.writer:
            chunks.write(c, value)
        kill_after_chunk(phase, c)

    def mine(self, n_chunks: int) -> list[int]:
        """This replica's chunks."""
        return list(range(self.replica, n_chunks, self.replicas))

    def todo(self, chunks: ChunkDir, n_chunks: int) -> list[int]:
        """This replica's chunks not yet in ``chunks`` (read by every rank before any rank writes more)."""
        left = [c for c in self.mine(n_chunks) if not chunks.done(c)]
        self.barrier()
        return left


def open_work_dir(work: Path, manifest: dict, layout: ReplicaLayout, key: str) -> Path:
    """``work`` with ``manifest.json``; one line (naming ``key``) when it holds another run's work."""
    work = Path(work)
    manifest = json.loads(json.dumps(manifest))
    mpath = work / "manifest.json"
    if mpath.is_file() and json.loads(mpath.read_text()) != manifest:
        raise ConfigError(f"{work}: holds the work of another config or input; delete it to start over",
                          key=key)
    layout.barrier()
    if layout.rank0:
        work.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(manifest, indent=1))
    layout.barrier()
    return work


def read_done(path: Path):
    """The done marker at ``path`` (a dict with ``checkpoint``) when it names a complete checkpoint; else
    None."""
    from megatron_align.models.checkpoint import is_complete_checkpoint

    path = Path(path)
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    return done if is_complete_checkpoint(done["checkpoint"]) else None


def write_done(path: Path, **fields) -> None:
    """Write the done marker (``checkpoint=...``, and whatever else) whole: temporary file, then rename."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, path)
