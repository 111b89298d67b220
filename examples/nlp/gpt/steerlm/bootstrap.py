"""SteerLM bootstrapping (the paper's step 4): rounds of sample -> annotate -> fine-tune, resumable.

    python examples/nlp/gpt/steerlm/bootstrap.py rounds=2 prompts=data/prompts.jsonl \
        sft_checkpoint=results/acsft/checkpoints/step=800 output_dir=results/bootstrap \
        annotate.url=http://127.0.0.1:1424 sample.k=4 sample.temperature=0.7 sample.values=verbosity:2 \
        finetune.trainer.sft.max_steps=100 finetune.model.optim.lr=5e-6

Round r samples ``sample.k`` responses per prompt from the previous round's checkpoint (round 1: the SFT
checkpoint) conditioned on quality:4, labels them with the reward model (``annotate.url`` or
``annotate.rm_checkpoint``), and fine-tunes that checkpoint on them (``finetune.<key>``: any SFT key of
conf/gpt_sft.yaml). Outputs: ``output_dir/round_<r>/{samples.jsonl, annotated.jsonl, sft/}``; rerunning the
command skips every finished step and resumes the unfinished one. Runs as one process (the policy and an
in-process reward model are loaded here; ``megatron_align/algorithms/steerlm.py``). Every key:
``megatron_align/config/stages/steerlm.py`` (``BootstrapConfig``). Bad keys: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.config.stages.steerlm import FINETUNE_HELP, BootstrapConfig, split_overrides


def report(cfg: BootstrapConfig, summaries: list[dict]) -> None:
    for s in summaries:
        means = ", ".join(f"{k} {v:.2f}" for k, v in s["mean_labels"].items())
        print(f"round {s['round']}: {s.get('samples', '-')} samples; mean labels {means}; "
              f"checkpoint {s['checkpoint']}")


def main(argv: list[str]) -> int:
    own, sft = split_overrides(argv)

    def run(cfg: BootstrapConfig) -> list[dict]:
        from megatron_align.algorithms.steerlm import run_bootstrap

        return run_bootstrap(cfg, sft)

    return stage_main(BootstrapConfig, None, own, run, report, help_epilog=FINETUNE_HELP)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
