"""SteerLM bootstrapping, step a: sample k responses per prompt at maximum quality.

    python examples/nlp/gpt/steerlm/sample.py prompts=data/prompts.jsonl checkpoint=results/acsft/ckpt \
        output=boot/samples.jsonl sample.k=4 sample.temperature=0.7 sample.tokens_to_generate=512
    python examples/nlp/gpt/steerlm/sample.py prompts=... output=... \
        sample.url=http://127.0.0.1:1427   # a server

``prompts``: NeMo chat records, each answered after its last User turn; the output holds ``k`` records per
prompt with the response labelled by the conditioning label (``quality:4`` + ``sample.values``). Every key:
``megatron_align/config/stages/steerlm.py`` (``SampleStepConfig``). An existing output is kept (delete it
to sample again). Bad keys or values: one line, exit 2.
"""

import os
import sys

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.steerlm import SampleStepConfig, require


def run(cfg: SampleStepConfig):
    if os.path.isfile(cfg.output):
        print(f"{cfg.output} exists: nothing to do (delete it to sample again)")
        return 0
    from megatron_align.algorithms.steerlm import sample_step

    return sample_step(cfg.prompts, cfg.output, cfg.sample, cfg.checkpoint)


def report(cfg: SampleStepConfig, s) -> None:
    if isinstance(s, dict):
        print(f"sampled {s['samples']} responses for {s['prompts']} prompts at {s['label']} "
              f"({s['dropped_empty']} empty ones dropped) -> {cfg.output}")


def main(argv: list[str]) -> int:
    return stage_main(SampleStepConfig, None, argv, run, report,
                      check=lambda cfg: require(cfg, "prompts", "output"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
