"""Generation: one interface (``GenerationBackend``) over the megatron KV-cache engine and TensorRT-LLM."""

from megatron_align.generation.interface import GenerationBackend, GenerationOutput, SamplingParams

__all__ = ["GenerationBackend", "GenerationOutput", "SamplingParams"]
