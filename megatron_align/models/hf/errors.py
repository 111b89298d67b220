"""The one error type of Hugging Face import/export: one line naming the file or field."""

from __future__ import annotations

from megatron_align.config.errors import UserError


class HFConversionError(UserError, ValueError):
    """An HF directory or checkpoint that cannot be converted (missing file, unsupported feature, bad key).

    The message is one line that names the file or config field and says what to do.
    """

    prefix = "convert error"

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
