"""Text generation from a megatron_align checkpoint, as NeMo's ``megatron_gpt_eval.py`` is run.

    python examples/megatron_gpt_eval.py gpt_model_file=ckpts/acsft server=True port=1427 \
        tensor_model_parallel_size=1 pipeline_model_parallel_size=1 trainer.devices=1 trainer.precision=bf16
    torchrun --nproc_per_node 8 examples/megatron_gpt_eval.py gpt_model_file=... server=True \
        tensor_model_parallel_size=8 trainer.devices=8 web_server=False port=1427

``server=True``: serve NeMo's ``PUT /generate`` (``GET /health``, OpenAPI at ``/docs``) on ``host:port``
(loopback by default) until SIGTERM / Ctrl-C. Otherwise generate for ``prompts`` with ``inference.*`` and
print the response. Defaults: conf/megatron_gpt_inference.yaml (every key documented there). Bad keys or
values: one line, exit 2.
"""

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf" / "megatron_gpt_inference.yaml"


def main(argv: list[str]) -> int:
    from megatron_align.config import load_config, run_cli
    from megatron_align.servers.config import GPTEvalConfig

    def inner() -> int:
        cfg = load_config(GPTEvalConfig, CONF, argv)
        cfg.validate()  # before the heavy imports: a typo fails in a second
        from megatron_align.log import setup_logging
        from megatron_align.servers.generation_server import run

        setup_logging()
        return run(cfg)

    return run_cli(inner)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
