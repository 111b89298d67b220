"""The one error type of ``.nemo`` import/export: one line naming the file, member or config key."""

from __future__ import annotations

from megatron_align.config.errors import CheckpointError


class NemoFormatError(CheckpointError):
    """A ``.nemo`` file or directory that cannot be used (unsafe member, unsupported variant, bad key)."""

    prefix = "nemo checkpoint error"

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
