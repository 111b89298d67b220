"""Hugging Face interop: HF llama / mistral / qwen2 / gpt2 models <-> megatron_align checkpoints.

- ``config_map``: HF ``config.json`` <-> ``ModelConfig``; refuses what our model would compute differently.
- ``layout``: pure tensor transforms (QKV interleave, gate/up, vocab padding) and local <-> TE names.
- ``weights_llama`` / ``weights_gpt2``: HF state dict <-> full (TP=1) megatron state dict.
- ``convert``: ``import_hf`` / ``export_hf`` end to end (safetensors in and out, checkpoint via
  ``models.checkpoint``).

Importing this package does not import megatron; ``convert.import_hf`` / ``export_hf`` do, when called.
"""

from megatron_align.models.hf.config_map import (
    SUPPORTED_MODEL_TYPES,
    hf_config_from_model,
    model_config_from_hf,
)
from megatron_align.models.hf.convert import export_hf, import_hf
from megatron_align.models.hf.errors import HFConversionError

__all__ = [
    "HFConversionError", "SUPPORTED_MODEL_TYPES", "export_hf", "hf_config_from_model", "import_hf",
    "model_config_from_hf",
]
