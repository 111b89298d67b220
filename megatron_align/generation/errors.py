"""``GenerationError``: the one error type of generation plumbing a user can cause (a wrong checkpoint kind, a
server that refuses or cannot be reached, a prompt the context cannot take): one line, exit status 2."""

from megatron_align.config.errors import UserError


class GenerationError(UserError, ValueError):
    """A generation request that cannot be served as asked; the message names the server, file or field."""

    prefix = "generation error"
