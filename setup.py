"""Installs megatron_align (its Triton kernels live in ``megatron_align.kernels``)."""

from setuptools import find_packages, setup

setup(
    name="megatron_align",
    version="0.1.0",
    description=("Megatron-Core-native alignment: SteerLM, SteerLM 2.0, self-rewarding, offline RS/ReST, "
                 "EXO/DPO"),
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_align", "megatron_align.*"]),
    package_data={"megatron_align": ["resources/*", "resources/**/*"]},
    install_requires=[
        # torch: any release from 2.6 (weights_only loads) that megatron-core 0.16 supports; 2.13.0 is tested.
        "torch>=2.6",
        # The megatron-core line we test against (0.16.x ships cp311/cp312 wheels).
        "megatron-core>=0.16,<0.17",
        # megatron-core imports these without declaring them.
        "tqdm",
        "psutil",
        "packaging",
        "numpy",
        "omegaconf>=2.3",
        "safetensors",
        "sentencepiece",
        "tokenizers>=0.19",
        "einops",
        "tensorboard",
        "matplotlib",
        # data: tokenizers' own Jinja chat templates (model.data.chat_template=tokenizer).
        "jinja2>=3.0",
        # kernels/: compiled on CUDA, interpreted on CPU in tests (TRITON_INTERPRET=1); 3.8.0 is tested.
        # On GPU images the one that ships with torch is kept (see Dockerfile's constraints).
        "triton>=3.2; platform_system == 'Linux'",
        # servers: NeMo's PUT /generate and NeMo-Aligner's reward-model server (megatron_align/servers).
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "pydantic>=2",
    ],
    extras_require={
        "test": ["pytest>=8", "transformers>=4.45", "wandb", "pyarrow", "requests", "schemathesis>=4.0",
                 "hypothesis>=6.100", "import-linter>=2.1"],
        "dev": ["ruff==0.17.6"],
        # GPU only: installed inside the NGC image (see Dockerfile); never the PyPI package named "apex".
        "wandb": ["wandb"],
        # SteerLM data preparation: HelpSteer / HelpSteer2 given as parquet (JSONL needs nothing).
        "parquet": ["pyarrow"],
        "trtllm": ["tensorrt_llm==1.2.1", "ray[default]==2.53.0"],
    },
    entry_points={"console_scripts": ["megatron-align=megatron_align.cli:main"]},
)
