"""The one body of every stage script under ``examples/``: load the config, check it, run the stage, report.

    stage_main(SFTConfig, "gpt_sft.yaml", argv, "megatron_align.algorithms.sft:run_sft",
               report=report_losses("sft"))

1. ``load_config(schema, conf/<yaml>, argv)``: the schema's defaults, then the YAML, then ``key=value``
   overrides (a checkpoint key naming a ``.nemo`` first points at its imported copy: ``nemo_paths.py``);
   ``--help`` prints every key with its default and exits 0; a bad key, type or layout is one line and exit
   status 2 (``run_cli``).
2. ``check(cfg)`` (optional), and for a config with a ``trainer`` section the launcher's process count
   against ``trainer.num_nodes * trainer.devices`` - all before any heavy import, so a typo fails at once.
3. Logging set up, then ``run(cfg)`` (given as ``"module:function"`` so torch and megatron are imported only
   now); torch.distributed is shut down afterwards, also when the stage fails.
4. ``report(cfg, result)`` on rank 0; the exit status is ``result`` when the stage returns an int, else 0.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Optional

from megatron_align.config import check_launch_matches, load_config, run_cli
from megatron_align.config.loader import CONF_DIR


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def stage_main(schema: type, conf: Optional[str], argv: list[str], run: str | Callable,
               report: Optional[Callable[[Any, Any], None]] = None, *, check: Optional[Callable] = None,
               validate: bool = True, help_epilog: str = "", help_prog: Optional[str] = None) -> int:
    """Run one stage from its command line (module docstring); returns the exit status."""

    def inner() -> int:
        from megatron_align.cli.nemo_paths import convert_nemo_paths

        cfg = load_config(schema, CONF_DIR / conf if conf else None, convert_nemo_paths(argv),
                          validate=validate, help_epilog=help_epilog, help_prog=help_prog)
        if check is not None:
            check(cfg)
        if validate and hasattr(cfg, "trainer"):
            from megatron_align.distributed.launch import detect_launch_env

            check_launch_matches(cfg, detect_launch_env().world_size)
        from megatron_align.distributed.launch import detect_launch_env, shutdown
        from megatron_align.log import setup_logging

        setup_logging()
        try:
            result = _resolve(run)(cfg)
        finally:
            shutdown()
        if report is not None and detect_launch_env().rank == 0:
            report(cfg, result)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    return run_cli(inner)


def report_losses(name: str) -> Callable[[Any, dict], None]:
    """A ``report`` for training stages: steps, first and last loss, and the run directory."""

    def report(cfg: Any, summary: dict) -> None:
        losses = list(summary["losses"].values())
        if losses:
            print(f"{name}: {summary['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                  f"run directory {summary['run_dir']}")

    return report
