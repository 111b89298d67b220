"""SteerLM 2.0's training data from labelled chats: sample responses from the SteerLM model, score each with
log P(a|x,y) (reward model), log P(y|x) (SFT model) and log Q'(y|a,x) (the sampling distribution), write the
seed's JSON lines.

    python examples/nlp/gpt/build_steerlm2_dataset.py input=data/oasst/train_labeled.jsonl \
        output=data/steerlm2/train.jsonl policy_checkpoint=/models/steerlm sft_checkpoint=/models/sft \
        rm_checkpoint=/models/rm num_responses=4 sample.temperature=1.0 sample.tokens_to_generate=512

Resumable: run the same command again after a crash. Every key: ``--help``
(``megatron_align/config/stages/steerlm2.py``, ``BuildSteerLM2Config``). Bad keys or data: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.steerlm2 import BuildSteerLM2Config


def report(cfg: BuildSteerLM2Config, s) -> None:
    if isinstance(s, dict):
        print(f"steerlm2 dataset: {s['prompts']} prompts x {cfg.num_responses} responses ({s['skipped']} "
              f"input records skipped) -> {cfg.output} (sha256 {s['sha256'][:16]})")


def main(argv: list[str]) -> int:
    return stage_main(BuildSteerLM2Config, None, argv,
                      "megatron_align.algorithms.steerlm2_build:build_steerlm2", report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
