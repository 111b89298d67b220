"""SteerLM bootstrapping, step b: label every answer of the sampled chats with the reward model.

    python examples/steerlm/annotate.py input=boot/samples.jsonl output=boot/annotated.jsonl \
        annotate.url=http://127.0.0.1:1424                      # examples/serve_reward_model.py
    python examples/steerlm/annotate.py input=... output=... annotate.rm_checkpoint=results/rm/checkpoints/...

Each Assistant turn gets the label ``quality:q,...,verbosity:v`` from the 9-attribute regression reward model
(``megatron_align/data/steerlm/annotate.py``), as ``examples/data/steerlm/attribute_annotate.py`` writes it;
the output is resumed when present. Every key: ``megatron_align/steerlm/bootstrap_config.py``
(``AnnotateStepConfig``). Bad keys, records or an unreachable server: one line, exit 2.
"""

import sys


def main(argv: list[str]) -> int:
    from megatron_align.config import load_config, run_cli
    from megatron_align.steerlm.bootstrap_config import AnnotateStepConfig, require

    def inner() -> int:
        cfg = load_config(AnnotateStepConfig, None, argv)
        require(cfg, "input", "output")
        from megatron_align.distributed.launch import shutdown
        from megatron_align.log import setup_logging
        from megatron_align.steerlm.bootstrap import annotate_step

        setup_logging()
        try:
            s = annotate_step(cfg.input, cfg.output, cfg.annotate)
        finally:
            shutdown()
        print(f"annotated {s['annotated_now']} records ({s['records']} in all) -> {cfg.output}")
        return 0

    return run_cli(inner)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
