"""TensorRT-LLM generation backend: megatron -> HF weight conversion for refit, and the backend itself.

- ``convert``: one replica's megatron TP/PP shards -> full HF-named tensors, streamed in groups and bounded
  buckets (pure, CPU-testable);
- ``reshard``: full HF tensors -> what each rank of a TP=k engine holds (verification, pre-sharded engines);
- ``gather``: the same conversion inside a live job, over process groups passed as arguments;
- ``sampling`` / ``ipc``: ``SamplingParams`` and ``update_weights`` payloads in TensorRT-LLM 1.2.1's format;
- ``backend``: ``TRTLLMBackend`` (imports ``tensorrt_llm`` only when an engine is started).

Nothing here imports ``tensorrt_llm`` at import time.
"""

from megatron_align.generation.trtllm.convert import iter_buckets, iter_hf_groups, megatron_shards_to_hf
from megatron_align.generation.trtllm.reshard import reshard_for_tp, shard_for_rank

__all__ = ["iter_buckets", "iter_hf_groups", "megatron_shards_to_hf", "reshard_for_tp", "shard_for_rank"]
