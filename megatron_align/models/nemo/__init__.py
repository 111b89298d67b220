"""NeMo 1.x ``.nemo`` checkpoints (mcore GPT and NeMo-Aligner reward models) <-> megatron_align checkpoints.

- ``archive``: the tarball or its extracted directory, member names checked, links and escapes refused.

The format, with its sources in NeMo's code: docs/nemo_format_research.md.
"""
