"""The ``megatron-align`` command: one entry point, one sub-command per job.

    megatron-align demo [steerlm] [key=value ...]
                                                SteerLM end to end on built-in data (the README's job)
    megatron-align demo dpo|exo [key=value ...] DPO / EXO from the demo's SFT model: reward against KL
    megatron-align convert --from-hf DIR --out CKPT | --to-hf CKPT --out DIR
    megatron-align convert --from-nemo X.nemo --out CKPT | --to-nemo CKPT --out X.nemo
                                                Hugging Face / NeMo checkpoints in and out
    megatron-align exo STAGE ARGS...            the EXO repository's stages (train_sft, inference_sft,
                                                train_rm, inference_rm, train_exo, pref_to_rw)
    megatron-align steerlm2 build|train|rounds [key=value ...]
                                                SteerLM 2.0: build records, train, or k rounds of both
    megatron-align offline-loop [key=value ...]  the offline RS / ReST loop (sample, label, SFT), resumable
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


DEMOS = ("steerlm", "dpo", "exo", "steerlm2")
"""The demos ``megatron-align demo [stage]`` knows; the first is the default."""


def _run_demo(schema: type, argv: list[str], prog: str, epilog: str, pipeline: str, title: str,
              artefacts: str) -> int:
    """Load ``schema`` from ``argv`` (one-line errors; before any torch import, so --help and typos are
    instant), run ``pipeline`` (``module:function``), print its table on rank 0."""
    import importlib
    import warnings

    from megatron_align.config import check_launch_matches, load_config, run_cli

    def main():
        cfg = load_config(schema, None, argv, help_prog=prog, help_epilog=epilog)
        check_launch_matches(cfg, _launch_world_size())
        _setup_logging()
        warnings.filterwarnings("ignore")
        from megatron_align.distributed.launch import detect_launch_env, shutdown

        module, _, name = pipeline.partition(":")
        results = getattr(importlib.import_module(module), name)(cfg)
        shutdown()
        if detect_launch_env().rank == 0:
            print(f"\n{title} ({results['wall_seconds']:.0f} s, precision {results['config']['precision']})")
            print(results["table"], end="")
            print(f"run directory   {results['run_dir']}  ({artefacts})")
        return 0

    return run_cli(main)


def demo(argv: list[str]) -> int:
    """``megatron-align demo [stage]``: load the config (one-line errors), run the demo, print the table."""
    stage = DEMOS[0]
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        stage, argv = argv[0], argv[1:]
        if stage not in DEMOS:
            print(f"config error: unknown demo {stage!r}; available: {', '.join(DEMOS)}", file=sys.stderr)
            return 2
    if stage in ("dpo", "exo"):
        from megatron_align.demo.preference.config import PreferenceDemoConfig, with_size_preset

        methods = ["dpo"] if stage == "dpo" else ["exo-rw"]
        return _run_demo(PreferenceDemoConfig, with_size_preset(argv, methods),
                         f"megatron-align demo {stage}", PREFERENCE_HELP,
                         "megatron_align.demo.preference.pipeline:run_preference_demo",
                         f"Preference demo ({stage}): held-out rule reward against KL(pi || pi_ref)",
                         "results.json, table.md, reward_kl.png")
    if stage == "steerlm2":
        from megatron_align.demo.steerlm2.config import SteerLM2DemoConfig
        from megatron_align.demo.steerlm2.config import with_size_preset as steerlm2_preset

        return _run_demo(SteerLM2DemoConfig, steerlm2_preset(argv), "megatron-align demo steerlm2",
                         "Presets: size=tiny (CI); size=full (default).",
                         "megatron_align.demo.steerlm2.pipeline:run_steerlm2_demo",
                         "SteerLM 2.0 demo: steering error |requested - measured| on held-out questions",
                         "results.json, table.md, mae.png")
    from megatron_align.demo.steerlm.config import DemoConfig
    from megatron_align.demo.steerlm.config import with_size_preset as steerlm_preset

    return _run_demo(DemoConfig, steerlm_preset(argv), "megatron-align demo", DEMO_HELP,
                     "megatron_align.demo.steerlm.pipeline:run_demo",
                     "SteerLM demo: requested vs rule-measured attribute values",
                     "results.json, table.md, steering.png")


PREFERENCE_HELP = """Presets: size=tiny (the CI-sized run); size=full (default). `demo dpo` trains dpo,
`demo exo` exo-rw (preference.methods=[dpo,exo-rw] both); runs of the other method already in the run
directory (default runs/preference_demo) are kept: `demo dpo` then `demo exo` puts both on reward_kl.png."""


DEMO_HELP = """Presets: size=tiny (the CI-sized run, about a minute); size=full (default, the README's).
Output: exp_manager.explicit_log_dir=DIR (default runs/steerlm_demo): data, tokenizer, each stage's
checkpoints and metrics, results.json, table.md, steering.png."""


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
        from megatron_align.cli.convert import convert_main

        return convert_main(rest)
    if cmd == "exo":
        from megatron_align.cli.exo import exo_main

        return exo_main(rest)
    if cmd == "offline-loop":
        from megatron_align.cli.offline import loop_main

        return loop_main(rest)
    if cmd == "steerlm2":
        from megatron_align.cli.steerlm2 import steerlm2_main

        return steerlm2_main(rest)
    if cmd == "steer":
        from megatron_align.cli.steer import main as steer_main

        return steer_main(rest)
    if cmd == "plot":
        plot_usage = ("usage: megatron-align plot RUN_DIR\n  PNG curves of each stage's metrics.jsonl below "
                      "RUN_DIR (a stage directory, or a run of several: RUN_DIR/plots/<stage>.png)")
        if rest in (["-h"], ["--help"]):
            print(plot_usage)
            return 0
        if len(rest) != 1:
            print(plot_usage, file=sys.stderr)
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
        if rest:
            print("usage: megatron-align version   (prints the installed version)")
            return 0 if rest in (["-h"], ["--help"]) else 2
        from importlib.metadata import version

        print(version("megatron_align"))
        return 0
    print(f"megatron-align: unknown command {cmd!r}\nusage:\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
