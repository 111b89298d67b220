"""Offline alignment, step 1 (seed 003): ``data.n`` samples of every prompt from the policy, as
``{input, output}`` lines, checkpointed to ``<output_file>_temp/`` every ``checkpoint_interval`` batches
and resumable.

    python examples/nlp/gpt/offline/launch_random_sampler.py gpt_model_file=/path/to/sft_model.nemo \
        inference.greedy=False inference.add_BOS=False inference.tokens_to_generate=2048 \
        inference.temperature=0.9 trainer.num_nodes=1 trainer.devices=8 trainer.precision=bf16-mixed \
        megatron_amp_O2=True data.micro_batch_size=32 data.max_seq_length=2048 data.n=16 \
        data.concat_sampling_probabilities=[1] data.file_names=[/path/to/prompts_dataset.jsonl] \
        data.hf_dataset=True output_file=/path/to/generated_samples.jsonl checkpoint_interval=1

Every key: ``--help`` (``conf/megatron_random_sampler.yaml``; ``megatron_align/config/stages/offline.py``).
Bad keys or data: one line, exit 2.
"""

import sys

from megatron_align.cli.offline import sampler_main

main = sampler_main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
