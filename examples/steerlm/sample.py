"""SteerLM bootstrapping, step a: sample k responses per prompt at maximum quality.

    python examples/steerlm/sample.py prompts=data/prompts.jsonl checkpoint=results/acsft/ckpt \
        output=boot/samples.jsonl sample.k=4 sample.temperature=0.7 sample.tokens_to_generate=512
    python examples/steerlm/sample.py prompts=... output=... sample.url=http://127.0.0.1:1427   # a server

``prompts``: NeMo chat records, each answered after its last User turn; the output holds ``k`` records per
prompt with the response labelled by the conditioning label (``quality:4`` + ``sample.values``). Every key:
``megatron_align/steerlm/bootstrap_config.py`` (``SampleStepConfig``). An existing output is kept (delete it
to sample again). Bad keys or values: one line, exit 2.
"""

import os
import sys


def main(argv: list[str]) -> int:
    from megatron_align.config import load_config, run_cli
    from megatron_align.steerlm.bootstrap_config import SampleStepConfig, require

    def inner() -> int:
        cfg = load_config(SampleStepConfig, None, argv)
        require(cfg, "prompts", "output")
        if os.path.isfile(cfg.output):
            print(f"{cfg.output} exists: nothing to do (delete it to sample again)")
            return 0
        from megatron_align.distributed.launch import shutdown
        from megatron_align.log import setup_logging
        from megatron_align.steerlm.bootstrap import sample_step

        setup_logging()
        try:
            s = sample_step(cfg.prompts, cfg.output, cfg.sample, cfg.checkpoint)
        finally:
            shutdown()
        print(f"sampled {s['samples']} responses for {s['prompts']} prompts at {s['label']} "
              f"({s['dropped_empty']} empty ones dropped) -> {cfg.output}")
        return 0

    return run_cli(inner)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
