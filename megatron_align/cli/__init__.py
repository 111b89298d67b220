"""The ``megatron-align`` command (``main``) and the one body every stage script runs
(``stage.stage_main``)."""

from megatron_align.cli.main import main

__all__ = ["main"]
