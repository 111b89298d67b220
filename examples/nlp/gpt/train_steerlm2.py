"""SteerLM 2.0 training as the seed runs it (``examples/nlp/gpt/train_steerlm2.py``): the SFT stage's keys
(``trainer.sft.*``, ``model.data.train_ds.*``, ``model.optim.*``, ``exp_manager.*``, ...) plus
``model.steerlm2.{micro_batch_size,forward_micro_batch_size,length_normalization,overlong}``.

    python examples/nlp/gpt/train_steerlm2.py model.restore_from_path=/models/steerlm \
        model.data.train_ds.file_path=data/steerlm2/train.jsonl \
        model.data.validation_ds.file_path=data/steerlm2/val.jsonl \
        model.steerlm2.micro_batch_size=2 model.steerlm2.forward_micro_batch_size=2

Records: the seed's JSON lines (``system``, ``prompt_turns``, ``label``, ``responses`` with their three log
values). Defaults: conf/train_steerlm2.yaml; ``--help`` lists every key. Bad keys or data: one line, exit 2.
"""

import sys

from megatron_align.cli.steerlm2 import train_main

main = train_main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
