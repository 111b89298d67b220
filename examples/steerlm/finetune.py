"""SteerLM bootstrapping, step c: fine-tune the attribute-conditioned SFT model on the annotated samples.

    python examples/steerlm/finetune.py input=boot/annotated.jsonl checkpoint=results/acsft/checkpoints/... \
        output_dir=boot/sft finetune.trainer.sft.max_steps=100 finetune.model.optim.lr=5e-6 \
        finetune.model.data.train_ds.global_batch_size=64

The SFT stage (``examples/train_gpt_sft.py``) with ``conf/gpt_sft.yaml``, the seed's chat settings
(``model.data.chat=True``, ``add_eos=False``) and every ``finetune.<key>`` given; it starts from
``checkpoint`` and resumes its own newest checkpoint in ``output_dir``. A finished run is not repeated. Bad
keys: one line, exit 2.
"""

import sys


def main(argv: list[str]) -> int:
    from megatron_align.config import load_config, run_cli
    from megatron_align.steerlm.bootstrap_config import (
        FINETUNE_HELP,
        FinetuneStepConfig,
        require,
        sft_config,
        split_overrides,
    )

    def inner() -> int:
        own, sft = split_overrides(argv)
        cfg = load_config(FinetuneStepConfig, None, own, help_epilog=FINETUNE_HELP)
        require(cfg, "input", "checkpoint", "output_dir")
        sft_config(cfg.input, cfg.checkpoint, cfg.output_dir, sft)  # bad finetune.* keys fail here, at once
        from megatron_align.distributed.launch import shutdown
        from megatron_align.log import setup_logging
        from megatron_align.steerlm.bootstrap import finetune_step

        setup_logging()
        try:
            final = finetune_step(cfg.input, cfg.checkpoint, cfg.output_dir, sft)
        finally:
            shutdown()
        print(f"fine-tuned checkpoint: {final}")
        return 0

    return run_cli(inner)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
