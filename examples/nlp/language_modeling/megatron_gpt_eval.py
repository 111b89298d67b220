"""Text generation from a megatron_align checkpoint, as NeMo's ``megatron_gpt_eval.py`` is run.

    python examples/nlp/language_modeling/megatron_gpt_eval.py gpt_model_file=ckpts/acsft server=True \
        port=1427 \
        tensor_model_parallel_size=1 pipeline_model_parallel_size=1 trainer.devices=1 trainer.precision=bf16
    torchrun --nproc_per_node 8 examples/nlp/language_modeling/megatron_gpt_eval.py gpt_model_file=... \
        server=True \
        tensor_model_parallel_size=8 trainer.devices=8 web_server=False port=1427

``server=True``: serve NeMo's ``PUT /generate`` (``GET /health``, OpenAPI at ``/docs``) on ``host:port``
(loopback by default) until SIGTERM / Ctrl-C. Otherwise generate for ``prompts`` with ``inference.*`` and
print the response. Defaults: conf/megatron_gpt_inference.yaml (every key documented there). Bad keys or
values: one line, exit 2.
"""

import sys

from megatron_align.cli.stage import stage_main
from megatron_align.servers.config import GPTEvalConfig


def main(argv: list[str]) -> int:
    return stage_main(GPTEvalConfig, "megatron_gpt_inference.yaml", argv,
                      "megatron_align.servers.generation_server:run", check=GPTEvalConfig.validate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
