#!/usr/bin/env bash
# The EXO repository's inference_sft.sh on megatron_align (see megatron_align/cli/exo.py for paths and defaults):
#   bash examples/exo/inference_sft.sh DEVICE_IDS DATA_NAME:DATA_PATH SPLIT MODEL_PATH [key=value ...]
set -euo pipefail
exec "${PYTHON:-python}" -m megatron_align.cli exo inference_sft "$@"
