"""The offline stages' command bodies (seed 003): ``examples/nlp/gpt/offline/launch_random_sampler.py`` and
``launch_reward_labeler.py`` (same keys, same ``--help``), and ``megatron-align offline-loop``."""

from __future__ import annotations

from typing import Optional

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.offline import (
    SFT_PREFIX,
    OfflineLoopConfig,
    RandomSamplerConfig,
    RewardLabelerConfig,
)


def _report_sampler(cfg: RandomSamplerConfig, s) -> None:
    if isinstance(s, dict):
        print(f"random sampler: {s['prompts']} prompts x {cfg.data.n} -> {s['samples']} samples "
              f"({s['skipped']} skipped) in {cfg.output_file}")


def _report_labeler(cfg: RewardLabelerConfig, s) -> None:
    if isinstance(s, dict):
        std = f", standardized with mean {s['mean']:.4g} std {s['std']:.4g}" if "mean" in s else ""
        print(f"reward labeler: {s['samples']} samples, processor {s['processor']} kept {s['kept']}{std} -> "
              f"{cfg.output_file}")


def sampler_main(argv: list[str], prog: Optional[str] = None) -> int:
    return stage_main(RandomSamplerConfig, "megatron_random_sampler.yaml", argv,
                      "megatron_align.algorithms.offline.sampler:run_random_sampler", _report_sampler,
                      help_prog=prog)


def labeler_main(argv: list[str], prog: Optional[str] = None) -> int:
    return stage_main(RewardLabelerConfig, "megatron_reward_labeler.yaml", argv,
                      "megatron_align.algorithms.offline.labeler:run_reward_labeler", _report_labeler,
                      help_prog=prog)


def _report_loop(cfg: OfflineLoopConfig, summaries: list[dict]) -> None:
    for s in summaries:
        done = "skipped (done), " if s.get("skipped") else ""
        print(f"iteration {s['iteration']}: {done}model {s['checkpoint']}")


def loop_main(argv: list[str], prog: Optional[str] = "megatron-align offline-loop") -> int:
    from megatron_align.config.stages.steerlm import split_overrides

    own, sft = split_overrides(argv, prefix=SFT_PREFIX)

    def run(cfg: OfflineLoopConfig) -> list[dict]:
        from megatron_align.algorithms.offline.loop import run_offline_loop

        return run_offline_loop(cfg, sft)

    return stage_main(OfflineLoopConfig, None, own, run, _report_loop, help_prog=prog,
                      help_epilog="sft.<key>=value: any key of examples/nlp/gpt/train_gpt_sft.py")
