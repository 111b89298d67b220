#!/usr/bin/env bash
# The EXO repository's train_rm.sh on megatron_align (see megatron_align/cli/exo.py for paths and defaults):
#   bash examples/exo/train_rm.sh INIT_MODEL_NAME INIT_MODEL_PATH MODEL_TYPE DATA_NAME DATA_PATH [key=value ...]
set -euo pipefail
exec "${PYTHON:-python}" -m megatron_align.cli exo train_rm "$@"
