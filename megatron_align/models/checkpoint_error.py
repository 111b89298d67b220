"""``CheckpointError``: the one error type for a checkpoint the user gave us that cannot be used."""

from megatron_align.config.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory that cannot be used (missing, incomplete, unsafe, truncated, wrong model)."""

    prefix = "checkpoint error"
