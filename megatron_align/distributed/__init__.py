"""Process start (torchrun / srun / single process), megatron parallel groups, the CPU compatibility layer."""

from megatron_align.distributed.cpu_compat import cpu_compat_active, enable_cpu_compat
from megatron_align.distributed.launch import (
    LaunchEnv,
    compute_device,
    detect_launch_env,
    seed_all,
    shutdown,
    start,
)

__all__ = [
    "LaunchEnv", "compute_device", "cpu_compat_active", "detect_launch_env", "enable_cpu_compat", "seed_all",
    "shutdown", "start",
]
