"""Reward-model server, as NeMo-Aligner's ``serve_reward_model.py`` is run (SteerLM attribute annotation).

    python examples/serve_reward_model.py rm_model_file=ckpts/rm inference.port=1424
    torchrun --nproc_per_node 8 examples/serve_reward_model.py rm_model_file=... trainer.devices=8 \
        ++model.tensor_model_parallel_size=4 ++model.pipeline_model_parallel_size=1 \
        inference.micro_batch_size=2 inference.port=1424

Serves ``PUT /infer`` (``sentences`` or ``tokens`` + ``sequence_lengths`` -> ``rewards``, one value per
attribute; ``GET /health``; OpenAPI at ``/docs``) on ``inference.host:inference.port`` until SIGTERM.
Defaults: conf/inference_rm.yaml. Bad keys or values: one line, exit 2.
"""

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf" / "inference_rm.yaml"


def main(argv: list[str]) -> int:
    from megatron_align.config import load_config, run_cli
    from megatron_align.servers.config import RMServeConfig

    def inner() -> int:
        cfg = load_config(RMServeConfig, CONF, argv, validate=False)  # layout: checked at start-up
        cfg.validate()
        from megatron_align.log import setup_logging
        from megatron_align.servers.reward_server import run

        setup_logging()
        return run(cfg)

    return run_cli(inner)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
