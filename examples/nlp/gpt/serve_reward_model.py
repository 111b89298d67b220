"""Reward-model server, as NeMo-Aligner's ``serve_reward_model.py`` is run (SteerLM attribute annotation).

    python examples/nlp/gpt/serve_reward_model.py rm_model_file=ckpts/rm inference.port=1424
    torchrun --nproc_per_node 8 examples/nlp/gpt/serve_reward_model.py rm_model_file=... trainer.devices=8 \
        ++model.tensor_model_parallel_size=4 ++model.pipeline_model_parallel_size=1 \
        inference.micro_batch_size=2 inference.port=1424

Serves ``PUT /infer`` (``sentences`` or ``tokens`` + ``sequence_lengths`` -> ``rewards``, one value per
attribute; ``GET /health``; OpenAPI at ``/docs``) on ``inference.host:inference.port`` until SIGTERM.
Defaults: conf/inference_rm.yaml. Bad keys or values: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.servers.config import RMServeConfig


def main(argv: list[str]) -> int:
    # the layout is checked at start-up, against the checkpoint's
    return stage_main(RMServeConfig, "inference_rm.yaml", argv, "megatron_align.servers.reward_server:run",
                      check=RMServeConfig.validate, validate=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
