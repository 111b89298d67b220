"""Supervised fine-tuning, and SteerLM attribute-conditioned SFT, as NeMo-Aligner users run it.

    python examples/nlp/gpt/train_gpt_sft.py [key=value ...]
    torchrun --nproc_per_node 8 examples/nlp/gpt/train_gpt_sft.py trainer.devices=8 \
        model.tensor_model_parallel_size=8 ...

Defaults: conf/gpt_sft.yaml (every key documented there); the command line overrides them with the seed
documents' syntax (``key=value``, ``++key=value``, ``~key``). Bad keys, types or layouts: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import report_losses, stage_main
from megatron_align.config.stages.sft import SFTConfig


def main(argv: list[str]) -> int:
    return stage_main(SFTConfig, "gpt_sft.yaml", argv, "megatron_align.algorithms.sft:run_sft",
                      report=report_losses("sft"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
