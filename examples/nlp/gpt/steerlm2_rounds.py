"""SteerLM 2.0 iterations: rounds of (build the data with the current policy -> train it), resumable.

    python examples/nlp/gpt/steerlm2_rounds.py rounds=2 output_dir=results/steerlm2 \
        build.input=data/oasst/train_labeled.jsonl build.policy_checkpoint=/models/steerlm \
        build.sft_checkpoint=/models/sft build.rm_checkpoint=/models/rm build.num_responses=4 \
        train.trainer.sft.max_steps=100 train.model.data.train_ds.global_batch_size=64

``build.<key>``: the builder's keys (build_steerlm2_dataset.py --help); ``train.<key>``: any key of
train_steerlm2.py (its --help). Round r: ``output_dir/round_<r>/{data.jsonl, train/}``; rerunning the command
skips finished rounds and resumes the unfinished one. One process.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.steerlm import split_overrides
from megatron_align.config.stages.steerlm2 import TRAIN_PREFIX, RoundsSteerLM2Config


def report(cfg: RoundsSteerLM2Config, summaries: list[dict]) -> None:
    for s in summaries:
        done = "skipped (done), " if s.get("skipped") else ""
        print(f"round {s['round']}: {done}checkpoint {s['checkpoint']}")


def main(argv: list[str]) -> int:
    own, train = split_overrides(argv, prefix=TRAIN_PREFIX)

    def run(cfg: RoundsSteerLM2Config) -> list[dict]:
        from megatron_align.algorithms.steerlm2_rounds import run_rounds

        return run_rounds(cfg, train)

    return stage_main(RoundsSteerLM2Config, None, own, run, report,
                      help_epilog="train.<key>=value: any key of examples/nlp/gpt/train_steerlm2.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
