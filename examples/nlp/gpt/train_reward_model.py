"""Reward-model training as NeMo-Aligner users run it: SteerLM's regression reward model, HelpSteer2 and
HelpSteer2-Preference (``model.regression.loss_func=scaled_bt``), and binary Bradley-Terry reward models.

    python examples/nlp/gpt/train_reward_model.py [key=value ...]
    torchrun --nproc_per_node 8 examples/nlp/gpt/train_reward_model.py trainer.devices=8 \
        ++model.tensor_model_parallel_size=4 model.reward_model_type=regression ...

Defaults: conf/training_rm.yaml (every key documented there); the command line overrides them with the seed
documents' syntax (``key=value``, ``++key=value``, ``~key``). Bad keys, types or layouts: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import report_losses, stage_main
from megatron_align.config.stages.reward_model import RMConfig


def main(argv: list[str]) -> int:
    return stage_main(RMConfig, "training_rm.yaml", argv,
                      "megatron_align.algorithms.reward_model:run_reward_model", report=report_losses("rm"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
