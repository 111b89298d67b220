"""``.nemo`` paths on a stage's command line: every checkpoint key that names a NeMo 1.x ``.nemo`` (tarball or
extracted directory) is imported once into a cache and the key pointed at the copy, before the config is read.

    model.restore_from_path=/models/llama13b/llama13b.nemo  ->  model.restore_from_path=<cache>/<digest>

The keys: ``model.restore_from_path``, ``pretrained_checkpoint.restore_from_path``, ``gpt_model_file``,
``rm_model_file`` (the seed documents' spellings) and the SteerLM steps' ``checkpoint``, ``sft_checkpoint``,
``annotate.rm_checkpoint``. The cache is ``$MEGATRON_ALIGN_CACHE/nemo`` (default ``~/.cache/megatron_align``),
one directory per source, named by a digest of its absolute path, size and modification time, so a changed
file is imported again. Under torchrun / srun every rank resolves the same paths: the first takes a file lock
and imports in a child process (a clean single-process environment, whatever the launcher set), the others
wait on the lock and find the copy done. An import failure is the import's one line (``convert error: ...``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from megatron_align.config.errors import CheckpointError

CHECKPOINT_KEYS = ("model.restore_from_path", "pretrained_checkpoint.restore_from_path", "gpt_model_file",
                   "rm_model_file", "checkpoint", "sft_checkpoint", "annotate.rm_checkpoint")
_OVERRIDE = re.compile(r"^(\+\+|\+)?([\w.]+)=(.*)$", re.S)
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE")


def cache_root() -> Path:
    base = os.environ.get("MEGATRON_ALIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                  "megatron_align")
    return Path(base) / "nemo"


def _digest(path: Path) -> str:
    src = path.resolve()
    stat = (src / "model_config.yaml").stat() if src.is_dir() else src.stat()
    key = f"{src}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def imported_copy(path: str | os.PathLike, key: str) -> Path:
    """The megatron_align checkpoint imported from the ``.nemo`` at ``path`` (imported now if needed)."""
    from megatron_align.models.checkpoint import is_complete_checkpoint

    src = Path(path)
    out = cache_root() / _digest(src)
    if is_complete_checkpoint(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one importer; the others wait here and find the copy
        if not is_complete_checkpoint(out):
            env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
            print(f"{key}={src}: a .nemo checkpoint; importing it into {out} (once)", file=sys.stderr,
                  flush=True)
            cmd = [sys.executable, "-m", "megatron_align.cli", "convert", "--from-nemo", str(src), "--out",
                   str(out), "--overwrite"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
                last = lines[-1] if lines else f"exit status {done.returncode}"
                raise CheckpointError(f"{key}={src}: {last.removeprefix('convert error: ')}")
    return out


def convert_nemo_paths(argv: list[str]) -> list[str]:
    """``argv`` with each checkpoint key that names a ``.nemo`` pointed at its imported copy."""
    from megatron_align.models.nemo.archive import is_nemo_checkpoint

    out = []
    for arg in argv:
        m = _OVERRIDE.match(arg)
        if m and m.group(2) in CHECKPOINT_KEYS:
            value = m.group(3).strip().strip("'\"")
            if value and value.lower() not in ("null", "none") and is_nemo_checkpoint(value):
                arg = f"{m.group(1) or ''}{m.group(2)}={imported_copy(value, m.group(2))}"
        out.append(arg)
    return out
