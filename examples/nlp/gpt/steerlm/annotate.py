"""SteerLM bootstrapping, step b: label every answer of the sampled chats with the reward model.

    python examples/nlp/gpt/steerlm/annotate.py input=boot/samples.jsonl output=boot/annotated.jsonl \
        annotate.url=http://127.0.0.1:1424                      # examples/nlp/gpt/serve_reward_model.py
    python examples/nlp/gpt/steerlm/annotate.py input=... output=... \
        annotate.rm_checkpoint=results/rm/checkpoints/...

Each Assistant turn gets the label ``quality:q,...,verbosity:v`` from the 9-attribute regression reward model
(``megatron_align/data/steerlm/annotate.py``), as ``examples/nlp/data/steerlm/attribute_annotate.py`` writes
it;
the output is resumed when present. Every key: ``megatron_align/config/stages/steerlm.py``
(``AnnotateStepConfig``). Bad keys, records or an unreachable server: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.steerlm import AnnotateStepConfig, require


def run(cfg: AnnotateStepConfig) -> dict:
    from megatron_align.algorithms.steerlm import annotate_step

    return annotate_step(cfg.input, cfg.output, cfg.annotate)


def report(cfg: AnnotateStepConfig, s: dict) -> None:
    print(f"annotated {s['annotated_now']} records ({s['records']} in all) -> {cfg.output}")


def main(argv: list[str]) -> int:
    return stage_main(AnnotateStepConfig, None, argv, run, report,
                      check=lambda cfg: require(cfg, "input", "output"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
