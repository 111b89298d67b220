"""SteerLM bootstrapping, step c: fine-tune the attribute-conditioned SFT model on the annotated samples.

    python examples/nlp/gpt/steerlm/finetune.py input=boot/annotated.jsonl \
        checkpoint=results/acsft/checkpoints/... \
        output_dir=boot/sft finetune.trainer.sft.max_steps=100 finetune.model.optim.lr=5e-6 \
        finetune.model.data.train_ds.global_batch_size=64

The SFT stage (``examples/nlp/gpt/train_gpt_sft.py``) with ``conf/gpt_sft.yaml``, the seed's chat settings
(``model.data.chat=True``, ``add_eos=False``) and every ``finetune.<key>`` given; it starts from
``checkpoint`` and resumes its own newest checkpoint in ``output_dir``. A finished run is not repeated. Bad
keys: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.steerlm import (
    FINETUNE_HELP,
    FinetuneStepConfig,
    require,
    sft_config,
    split_overrides,
)


def main(argv: list[str]) -> int:
    own, sft = split_overrides(argv)

    def check(cfg: FinetuneStepConfig) -> None:
        require(cfg, "input", "checkpoint", "output_dir")
        sft_config(cfg.input, cfg.checkpoint, cfg.output_dir, sft)  # bad finetune.* keys fail here, at once

    def run(cfg: FinetuneStepConfig) -> str:
        from megatron_align.algorithms.steerlm import finetune_step

        return finetune_step(cfg.input, cfg.checkpoint, cfg.output_dir, sft)

    def report(cfg: FinetuneStepConfig, final: str) -> None:
        print(f"fine-tuned checkpoint: {final}")

    return stage_main(FinetuneStepConfig, None, own, run, report, check=check, help_epilog=FINETUNE_HELP)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
