"""Offline alignment, step 2 (seed 003): score every ``{input, output}`` sample with the reward model
``gpt_model_file`` and post-process them: ``processor=rs`` (best of each input's samples), ``rest`` (reward
above ``threshold``), ``dt`` (reward written into the input with ``reward_template``) or ``null``.

    python examples/nlp/gpt/offline/launch_reward_labeler.py gpt_model_file=/path/to/reward_model.nemo \
        trainer.num_nodes=1 trainer.devices=8 trainer.precision=bf16-mixed megatron_amp_O2=True \
        data.micro_batch_size=8 data.max_seq_length=4096 data.concat_sampling_probabilities=[1] \
        data.file_names=[/path/to/generated_samples.jsonl] data.hf_dataset=True processor=rs \
        export_reward=False output_file=/path/to/filtered_samples.jsonl checkpoint_interval=4

Every key: ``--help`` (``conf/megatron_reward_labeler.yaml``; ``megatron_align/config/stages/offline.py``).
Bad keys or data: one line, exit 2.
"""

import sys

from megatron_align.cli.offline import labeler_main

main = labeler_main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
