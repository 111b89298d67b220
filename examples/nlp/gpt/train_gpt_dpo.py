"""Preference training as NeMo-Aligner users run it (``train_gpt_dpo.py``): the DPO family
(``model.dpo.preference_loss=dpo|ipo|rpo_sq|rpo_bwd_kl|rpo_fwd_kl|scale``) and EXO
(``exo-rw|dpo-rw|exo-pref|dpo-pref`` with ``model.dpo.num_contrastive``, ``beta_r``, ``beta_pi``, ``temp``).

    python examples/nlp/gpt/train_gpt_dpo.py pretrained_checkpoint.restore_from_path=/ckpt/sft \
        "model.data.data_prefix={train: [/d/train.jsonl], validation: [/d/val.jsonl], test: [/d/val.jsonl]}" \
        model.dpo.ref_policy_kl_penalty=0.1 trainer.dpo.max_epochs=1
    torchrun --nproc_per_node 8 examples/nlp/gpt/train_gpt_dpo.py trainer.devices=8 \
        model.tensor_model_parallel_size=4 ...

Defaults: conf/gpt_dpo.yaml (every key documented there); ``key=value`` / ``++key=value`` / ``~key``
overrides; ``--help`` lists every key. Bad keys, types or layouts: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import report_losses, stage_main
from megatron_align.config.stages.dpo import DPOConfig


def main(argv: list[str]) -> int:
    return stage_main(DPOConfig, "gpt_dpo.yaml", argv, "megatron_align.algorithms.dpo:run_dpo",
                      report=report_losses("dpo"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
