"""SteerLM 2.0's training data from labelled chats: sample responses from the SteerLM model, score each with
log P(a|x,y) (reward model), log P(y|x) (SFT model) and log Q'(y|a,x) (the sampling distribution), write the
seed's JSON lines.

    python examples/nlp/gpt/build_steerlm2_dataset.py input=data/oasst/train_labeled.jsonl \
        output=data/steerlm2/train.jsonl policy_checkpoint=/models/steerlm sft_checkpoint=/models/sft \
        rm_checkpoint=/models/rm num_responses=4 sample.temperature=1.0 sample.tokens_to_generate=512

Parallel: ``torchrun --nproc_per_node N ... tensor_model_parallel_size=T
pipeline_model_parallel_size=P`` (N / (T x P) replicas share the prompts).
Resumable: run the same command again after a crash. Every key: ``--help``
(``megatron_align/config/stages/steerlm2.py``, ``BuildSteerLM2Config``). Bad keys or data: one line, exit 2.
"""

import sys

from megatron_align.cli.steerlm2 import build_main

main = build_main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
