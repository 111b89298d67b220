"""``megatron-align steerlm2 build|train|rounds ARGS``: SteerLM 2.0's three jobs, the bodies of
``examples/nlp/gpt/{build_steerlm2_dataset,train_steerlm2,steerlm2_rounds}.py`` (same keys, same ``--help``).
"""

from __future__ import annotations

import sys
from typing import Optional

from megatron_align.cli.stage import report_losses, stage_main
from megatron_align.config.stages.steerlm2 import (
    TRAIN_PREFIX,
    BuildSteerLM2Config,
    RoundsSteerLM2Config,
    SteerLM2Config,
)

USAGE = """usage: megatron-align steerlm2 build|train|rounds [key=value ...]
  build   records from labelled chats (examples/nlp/gpt/build_steerlm2_dataset.py)
  train   SteerLM 2.0 training on them (examples/nlp/gpt/train_steerlm2.py)
  rounds  k rounds of build -> train (examples/nlp/gpt/steerlm2_rounds.py)
each answers --help with its keys"""


def _report_build(cfg: BuildSteerLM2Config, s) -> None:
    if isinstance(s, dict):
        print(f"steerlm2 dataset: {s['prompts']} prompts x {cfg.num_responses}: {s['responses']} responses "
              f"({s['outside_support']} outside the sampling distribution's support dropped, {s['skipped']} "
              f"input records skipped) -> {cfg.output} (sha256 {s['sha256'][:16]})")


def build_main(argv: list[str], prog: Optional[str] = None) -> int:
    return stage_main(BuildSteerLM2Config, None, argv,
                      "megatron_align.algorithms.steerlm2_build:build_steerlm2", _report_build,
                      help_prog=prog)


def train_main(argv: list[str], prog: Optional[str] = None) -> int:
    return stage_main(SteerLM2Config, "train_steerlm2.yaml", argv,
                      "megatron_align.algorithms.steerlm2:run_steerlm2", report=report_losses("steerlm2"),
                      help_prog=prog)


def _report_rounds(cfg: RoundsSteerLM2Config, summaries: list[dict]) -> None:
    for s in summaries:
        done = "skipped (done), " if s.get("skipped") else ""
        print(f"round {s['round']}: {done}checkpoint {s['checkpoint']}")


def rounds_main(argv: list[str], prog: Optional[str] = None) -> int:
    from megatron_align.config.stages.steerlm import split_overrides

    own, train = split_overrides(argv, prefix=TRAIN_PREFIX)

    def run(cfg: RoundsSteerLM2Config) -> list[dict]:
        from megatron_align.algorithms.steerlm2_rounds import run_rounds

        return run_rounds(cfg, train)

    return stage_main(RoundsSteerLM2Config, None, own, run, _report_rounds,
                      help_epilog="train.<key>=value: any key of examples/nlp/gpt/train_steerlm2.py",
                      help_prog=prog)


JOBS = {"build": build_main, "train": train_main, "rounds": rounds_main}


def steerlm2_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] not in JOBS:
        print(f"steerlm2 error: unknown job {argv[0]!r}; use one of {', '.join(JOBS)}", file=sys.stderr)
        return 2
    return JOBS[argv[0]](argv[1:], f"megatron-align steerlm2 {argv[0]}")
