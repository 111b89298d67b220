"""SteerLM 2.0 iterations: rounds of (build the data with the current policy -> train it), resumable.

    python examples/nlp/gpt/steerlm2_rounds.py rounds=2 output_dir=results/steerlm2 \
        build.input=data/oasst/train_labeled.jsonl build.policy_checkpoint=/models/steerlm \
        build.sft_checkpoint=/models/sft build.rm_checkpoint=/models/rm build.num_responses=4 \
        train.trainer.sft.max_steps=100 train.model.data.train_ds.global_batch_size=64

``build.<key>``: the builder's keys (build_steerlm2_dataset.py --help); ``train.<key>``: any key of
train_steerlm2.py (its --help). Round r: ``output_dir/round_<r>/{data.jsonl, train/}``; rerunning the command
skips finished rounds and resumes the unfinished one. One process (the builder and the trainer each run
under torchrun on their own).
"""

import sys

from megatron_align.cli.steerlm2 import rounds_main

main = rounds_main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
