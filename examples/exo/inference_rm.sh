#!/usr/bin/env bash
# The EXO repository's inference_rm.sh on megatron_align (see megatron_align/cli/exo.py for paths and defaults):
#   bash examples/exo/inference_rm.sh DEVICE_IDS DATA_PATH SPLIT MODEL_PATH [key=value ...]
set -euo pipefail
exec "${PYTHON:-python}" -m megatron_align.cli exo inference_rm "$@"
