#!/usr/bin/env bash
# The EXO repository's train_exo.sh on megatron_align (see megatron_align/cli/exo.py for paths and defaults):
#   bash examples/exo/train_exo.sh INIT_MODEL_NAME INIT_MODEL_PATH MODEL_TYPE DATA_NAME DATA_PATH LOSS_TYPE NUM_CONTRASTIVE [key=value ...]
set -euo pipefail
exec "${PYTHON:-python}" -m megatron_align.cli exo train_exo "$@"
