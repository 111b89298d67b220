# syntax=docker/dockerfile:1.19
# ^ 1.19 is the first Dockerfile frontend where `COPY --exclude` is generally available (keeps .venv out).
#
# GPU image for megatron_align: Megatron-Core training + TensorRT-LLM rollout in one Python environment.
# Why these versions, and how to run stages in it: docs/gpu.md.
#
#   docker build -t megatron-align:gpu .
#   enroot import -o megatron-align.sqsh dockerd://megatron-align:gpu     # for srun --container-image

# TensorRT-LLM 1.2.1 release image = nvcr.io/nvidia/pytorch:25.12-py3 (Python 3.12, CUDA 13.1, NGC torch
# 2.10.0a0) plus the TRT-LLM wheel built for that torch; TRT-LLM's docs name it as the way to use TRT-LLM on
# an NGC PyTorch build (the PyPI wheel targets public torch 2.9.1). Transformer Engine comes from the NGC base.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:1.2.1
FROM ${BASE_IMAGE}

# The megatron-core line this package is written against (setup.py: >=0.16,<0.17); 0.16.1 has cp312 wheels.
ARG MEGATRON_CORE_SPEC="megatron-core==0.16.*"
# TRT-LLM's Ray orchestrator (used for in-place weight updates) needs Ray, which the image does not ship;
# TRT-LLM's Ray example lists ray[default] unpinned, so this pin is ours, for reproducible builds.
ARG RAY_VERSION=2.53.0

# Freeze what must never be replaced: torch and its CUDA libraries, Triton, Transformer Engine, TensorRT /
# TensorRT-LLM, apex, flash-attn, and numpy/transformers (TensorRT-LLM pins numpy<2 and an exact transformers).
# `pip list --format=freeze` always prints name==version (pip freeze may print file:// URLs for NGC wheels).
RUN mkdir -p /etc/pip && \
    python -m pip list --format=freeze \
      | grep -iE '^(torch|torchvision|torchaudio|triton|pytorch[-_]triton|transformer[-_]engine[-_a-z0-9]*|tensorrt[-_a-z0-9]*|apex|flash[-_]attn[-_a-z0-9]*|numpy|transformers|nvidia[-_][-_a-z0-9]+)==' \
      > /etc/pip/megatron-align-constraints.txt && \
    cat /etc/pip/megatron-align-constraints.txt

# PIP_CONSTRAINT: replaces NGC's global /etc/pip/constraint.txt (it pins every package and blocks ordinary
# installs) by the narrow file above, so that no later `pip install`, ours or a user's, can swap the GPU stack.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/etc/pip/megatron-align-constraints.txt

WORKDIR /workspace/megatron_align
# Everything but local environments and build/run outputs (the same list as .gitignore).
COPY --exclude=.venv --exclude=.git --exclude=**/__pycache__ --exclude=*.egg-info --exclude=build --exclude=dist \
     --exclude=.pytest_cache --exclude=.ruff_cache --exclude=runs --exclude=results . .

# Editable install, so a bind-mounted checkout over /workspace/megatron_align is picked up without rebuilding.
# The [trtllm] extra is satisfied by the base image's tensorrt_llm (pinned above: the PyPI stub can never win).
# Never add the PyPI package named "apex": it is an unrelated project.
RUN python -m pip install "${MEGATRON_CORE_SPEC}" -e ".[trtllm,test]" && \
    (python -c "import ray" 2>/dev/null || python -m pip install "ray[default]==${RAY_VERSION}")

# Build-time check without a GPU (metadata only: importing TE / TRT-LLM needs the CUDA driver).
RUN python <<'EOF'
from importlib.metadata import PackageNotFoundError, version

found = {}
for dist in ("torch", "transformer_engine", "tensorrt_llm", "megatron-core", "megatron_align", "ray", "apex"):
    try:
        found[dist] = version(dist)
    except PackageNotFoundError:
        found[dist] = None
    print(f"{dist:20s} {found[dist]}")
for required in ("torch", "transformer_engine", "tensorrt_llm", "megatron-core", "megatron_align", "ray"):
    assert found[required], f"{required} is missing from the image"
assert found["megatron-core"].startswith("0.16."), "megatron-core must be 0.16.x"
EOF

CMD ["/bin/bash"]
