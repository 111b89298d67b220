"""The ``megatron-align`` command: one entry point, one sub-command per job.

    megatron-align demo [key=value ...]         short SFT of a tiny model on built-in data (the README's job)
    megatron-align convert --from-hf DIR --out CKPT | --to-hf CKPT --out DIR
    megatron-align plot RUN_DIR                 PNG curves of a run's logged metrics (RUN_DIR/plots/)
    megatron-align steer --prompt TEXT [--values quality:4,humor:0,...] --url URL | --checkpoint DIR
                                                a SteerLM model's answer, steered by attribute values
    megatron-align version

Sub-commands that take a config accept the seed documents' override syntax (``key=value``, ``++key=value``,
``~key``); a bad key, type or layout prints one line and exits with status 2. Heavy imports (torch, megatron)
happen only inside the sub-command, so ``--help`` and config errors are instant.
"""

from __future__ import annotations

import sys


def _setup_logging() -> None:
    from megatron_align.log import setup_logging

    setup_logging()


def _launch_world_size() -> int:
    """World size the launcher promised (torchrun / srun), without starting anything."""
    from megatron_align.distributed.launch import detect_launch_env

    return detect_launch_env().world_size


def demo(argv: list[str]) -> int:
    """``megatron-align demo``: load the config (one-line errors), then run the demo."""
    import warnings

    from megatron_align.algorithms.demo import DemoConfig
    from megatron_align.config import check_launch_matches, load_config, run_cli

    def main():
        world = _launch_world_size()
        cfg = load_config(DemoConfig, None, argv)
        check_launch_matches(cfg, world)
        _setup_logging()
        warnings.filterwarnings("ignore")
        from megatron_align.algorithms.demo import run_demo

        summary = run_demo(cfg)
        from megatron_align.distributed.launch import shutdown

        rank0 = summary and _is_rank0()
        shutdown()
        if rank0:
            print(f"\nrun directory   {summary['run_dir']}")
            print(f"checkpoint      {summary['checkpoint']}")
            print(f"train loss      {summary['first_train_loss']:.3f} -> {summary['last_train_loss']:.3f}")
            print(f"val loss        {summary['val_loss_before']:.3f} -> {summary['val_loss_after']:.3f}")
            if "sample_answer" in summary:
                print(f"sample          {summary['sample_question']!r} -> {summary['sample_answer']!r}")
            print(f"time            {summary['seconds']:.1f} s for {summary['steps']} steps")
        return 0

    return run_cli(main)


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = __doc__.split("\n\n")[1]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage:\n" + usage)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        return demo(rest)
    if cmd == "convert":
        from megatron_align.models.hf.cli import convert_main

        return convert_main(rest)
    if cmd == "steer":
        from megatron_align.steerlm.steer_cli import main as steer_main

        return steer_main(rest)
    if cmd == "plot":
        if len(rest) != 1:
            print("usage: megatron-align plot RUN_DIR", file=sys.stderr)
            return 2
        from megatron_align.training.plot import plot_run

        try:
            paths = plot_run(rest[0])
        except FileNotFoundError as e:
            print(f"plot error: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(path)
        return 0
    if cmd == "version":
        from importlib.metadata import version

        print(version("megatron_align"))
        return 0
    print(f"megatron-align: unknown command {cmd!r}\nusage:\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
