"""``TRTLLMBackend``: generation with TensorRT-LLM 1.2.1 (PyTorch backend, Ray orchestrator) and weight refit.

Call sequence (docs/gpu.md, "TensorRT-LLM refit"):
- start, once, on the engine-owning rank: ``tensorrt_llm.LLM(model=<HF dir>, backend="pytorch",
  orchestrator_type="ray", ray_worker_extension_cls="tensorrt_llm.llmapi.rlhf_utils.WorkerExtension", ...)``;
  the HF directory comes from :func:`export_hf_dir` (the live model, written with ``models.hf`` export pieces)
  or from ``megatron-align convert`` / ``models.hf.export_hf`` on a checkpoint;
- ``generate``: our ``SamplingParams`` -> ``tensorrt_llm.SamplingParams`` (``sampling.py``), ``LLM.generate``
  on token ids, the result broadcast to every rank of the replica;
- ``refit(model)``: full HF groups on every rank (``gather.py``), packed into bounded buckets; per bucket each
  rank turns its tensors into CUDA IPC handles keyed by its GPU's UUID (``ipc.py``), the owner gathers them
  and calls ``LLM._collective_rpc("update_weights", args=(payload,))``; everyone waits for the call before
  the bucket is freed; finally ``update_weights(None)`` finalizes (post-load hooks, prefix-cache reset).

Only ``_start_engine``, ``_device_uuid`` and the default CUDA handle need TensorRT-LLM and a GPU; the engine,
the ``SamplingParams`` class, the handle maker and the device UUID can be passed in, which is how the CPU
tests drive every other line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from megatron_align.config.generation import TRTLLMConfig
from megatron_align.config.model import ModelConfig
from megatron_align.generation.interface import GenerationBackend, GenerationOutput, Prompts, SamplingParams
from megatron_align.generation.trtllm import ipc, sampling
from megatron_align.generation.trtllm.convert import Group, iter_buckets
from megatron_align.generation.trtllm.gather import iter_gathered_groups

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "tensorrt_llm.llmapi.rlhf_utils.WorkerExtension"
SLEEP_TAGS = ["model", "kv_cache"]
"""Memory released by ``sleep`` while training (``unload_engine_train``); verl's tag names."""


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def engine_kwargs(hf_dir: str | os.PathLike, cfg: TRTLLMConfig, tp: int, pp: int, dtype: str) -> dict:
    """Keyword arguments of ``tensorrt_llm.LLM`` (1.2.1 names) except ``kv_cache_config``."""
    engine_tp, engine_pp = cfg.engine_parallel_sizes(tp, pp)
    kw = dict(
        model=str(hf_dir),
        backend="pytorch",
        orchestrator_type="ray",
        ray_worker_extension_cls=WORKER_EXTENSION,
        tensor_parallel_size=engine_tp,
        pipeline_parallel_size=engine_pp,
        dtype=dtype,
        max_input_len=cfg.max_input_len,
        max_seq_len=cfg.max_input_len + cfg.max_output_len,
    )
    if cfg.unload_engine_train:
        kw["enable_sleep"] = True
    return kw


def export_hf_dir(
    groups: Iterable[Group],
    cfg: ModelConfig,
    out_dir: str | os.PathLike,
    model_type: str = "llama",
    dtype: str = "bfloat16",
    tokenizer_dir: Optional[str] = None,
    write: bool = True,
) -> Optional[Path]:
    """Write an HF directory (``config.json``, safetensors, tokenizer files) the engine starts from.

    ``groups``: :func:`gather.iter_gathered_groups` of the live model (collective: every rank iterates;
    only ranks with ``write=True`` keep and write the tensors).
    """
    from megatron_align.models.hf import config_map
    from megatron_align.models.hf.convert import EXPORT_DTYPES, copy_tokenizer_files, write_hf_state_dict

    state = {}
    for group in groups:
        if write:
            state.update((n, t.detach().to("cpu", EXPORT_DTYPES[dtype])) for n, t in group)
    if not write:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_hf_state_dict(state, out_dir)
    hf_config = config_map.hf_config_from_model(cfg, model_type, dtype)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if tokenizer_dir:
        copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


class TRTLLMBackend(GenerationBackend):
    """TensorRT-LLM generation for one model replica; collective over ``refit_group`` (its TP x PP ranks).

    ``llm``, ``sampling_cls``, ``make_handle`` and ``device_uuid`` replace, when given, the TensorRT-LLM
    engine, ``tensorrt_llm.SamplingParams``, the CUDA IPC handle maker and this GPU's UUID.
    """

    name = "trtllm"
    # TensorRT-LLM's sampler reports the log-prob of each token under the distribution it sampled from
    # (after temperature / top-k / top-p); not verified on a GPU here. Rollouts that need the policy's raw
    # log-probs under transformed settings recompute them with scoring.forward.token_logprobs_of.
    logprob_kind = "sampling"

    def __init__(
        self,
        hf_dir: str | os.PathLike,
        model_cfg: ModelConfig,
        trt_cfg: TRTLLMConfig,
        tokenizer=None,
        *,
        tp_group=None,
        pp_group=None,
        refit_group=None,
        engine_rank: int = 0,
        dtype: torch.dtype = torch.bfloat16,
        llm=None,
        sampling_cls: Optional[Callable[..., Any]] = None,
        make_handle: Optional[Callable[[torch.Tensor], ipc.Handle]] = None,
        device_uuid: Optional[str] = None,
    ):
        self.hf_dir, self.model_cfg, self.trt_cfg = Path(hf_dir), model_cfg, trt_cfg
        self.tokenizer = tokenizer
        self.tp_group, self.pp_group, self.refit_group = tp_group, pp_group, refit_group
        self.engine_rank, self.dtype = engine_rank, dtype
        self._llm, self._sampling_cls = llm, sampling_cls
        self._make_handle, self._uuid = make_handle, device_uuid
        self.bucket_bytes = trt_cfg.refit_bucket_mb * 1024 * 1024
        self.refits = 0

    # ---- process layout ----------------------------------------------------------------------------------
    def _distributed(self) -> bool:
        return self.refit_group is not None and dist.get_world_size(self.refit_group) > 1

    def is_owner(self) -> bool:
        """Whether this rank holds the ``LLM`` object."""
        return not self._distributed() or dist.get_rank(self.refit_group) == self.engine_rank

    def _owner_global_rank(self) -> int:
        return dist.get_global_rank(self.refit_group, self.engine_rank)

    def _barrier(self) -> None:
        if self._distributed():
            dist.barrier(group=self.refit_group)

    # ---- GPU-only pieces ---------------------------------------------------------------------------------
    def _start_engine(self):
        import tensorrt_llm
        from tensorrt_llm.llmapi import KvCacheConfig

        tp = dist.get_world_size(self.tp_group) if self.tp_group is not None else 1
        pp = dist.get_world_size(self.pp_group) if self.pp_group is not None else 1
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[self.dtype]
        kv = KvCacheConfig(free_gpu_memory_fraction=self.trt_cfg.kv_cache_free_gpu_memory_fraction)
        logger.info("starting TensorRT-LLM %s from %s", tensorrt_llm.__version__, self.hf_dir)
        return tensorrt_llm.LLM(**engine_kwargs(self.hf_dir, self.trt_cfg, tp, pp, dtype), kv_cache_config=kv)

    def _device_uuid(self) -> str:
        if self._uuid is None:
            from tensorrt_llm._torch.utils import get_device_uuid

            self._uuid = get_device_uuid(torch.cuda.current_device())
        return self._uuid

    def engine(self):
        """The ``tensorrt_llm.LLM`` (owner rank only), started on first use."""
        if not self.is_owner():
            raise RuntimeError("the TensorRT-LLM engine lives on the engine rank only")
        if self._llm is None:
            self._llm = self._start_engine()
        return self._llm

    def _sampling_params(self, **kw):
        if self._sampling_cls is None:
            from tensorrt_llm import SamplingParams as TRTSamplingParams

            self._sampling_cls = TRTSamplingParams
        return self._sampling_cls(**kw)

    # ---- generation --------------------------------------------------------------------------------------
    def _token_ids(self, prompts: Prompts, add_bos: bool) -> list[list[int]]:
        ids = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("string prompts need a tokenizer attached to the backend")
                ids.append(self.tokenizer.text_to_ids(p, add_bos=add_bos))
            else:
                bos = self.tokenizer.bos_id if (add_bos and self.tokenizer is not None) else None
                ids.append(([bos] if bos is not None else []) + [int(t) for t in p])
        return ids

    def _special_ids(self) -> tuple[Optional[int], int]:
        if self.tokenizer is None:
            return None, 0
        return self.tokenizer.eos_id, self.tokenizer.pad_id

    def generate(self, prompts: Prompts, params: SamplingParams) -> GenerationOutput:
        """Generate on the owner rank; every rank of ``refit_group`` returns the same output."""
        result = None
        if self.is_owner():
            ids = self._token_ids(prompts, params.add_BOS)
            eos, pad = self._special_ids()
            if params.tokens_to_generate == 0:
                done = [sampling.Completion([], None, "length") for _ in ids]
            else:
                sp = self._sampling_params(**sampling.trtllm_sampling_kwargs(params, eos, pad))
                outs = self.engine().generate(ids, sp, use_tqdm=False)
                done = [sampling.completion_from_trtllm(o) for o in outs]
            result = sampling.to_generation_output(ids, done, pad, params.compute_logprob)
            if self.tokenizer is not None:
                result.texts = [self.tokenizer.ids_to_text(result.tokens[i, : int(n)].tolist())
                                for i, n in enumerate(result.lengths)]
        if self._distributed():
            box = [result]
            dist.broadcast_object_list(box, src=self._owner_global_rank(), group=self.refit_group)
            result = box[0]
        return result

    # ---- refit -------------------------------------------------------------------------------------------
    def _gather_payload(self, payload: dict) -> Optional[dict]:
        if not self._distributed():
            return payload
        parts = [None] * dist.get_world_size(self.refit_group) if self.is_owner() else None
        dist.gather_object(payload, parts, dst=self._owner_global_rank(), group=self.refit_group)
        return ipc.merge_payloads(parts) if self.is_owner() else None

    def refit(self, model) -> None:
        """Push ``model``'s current weights into the engine (collective over ``refit_group``)."""
        groups = iter_gathered_groups(unwrap(model), self.model_cfg, self.tp_group, self.pp_group, self.dtype)
        for bucket in iter_buckets(groups, self.bucket_bytes):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the bucket's kernels are done before another process reads it
            payload = ipc.bucket_payload(bucket, self._device_uuid(), self._make_handle)
            merged = self._gather_payload(payload)
            if merged is not None:
                self.engine()._collective_rpc("update_weights", args=(merged,))
            self._barrier()  # the engine has copied the bucket; only now may its tensors be freed
            del bucket, payload, merged
        if self.is_owner():
            self.engine()._collective_rpc("update_weights", args=(None,))
        self._barrier()
        self.refits += 1

    # ---- memory and shutdown -----------------------------------------------------------------------------
    def sleep(self) -> None:
        """Release the engine's GPU memory for training (``trt_llm.unload_engine_train``)."""
        if self.trt_cfg.unload_engine_train and self.is_owner() and self._llm is not None:
            self._llm._collective_rpc("sleep", args=(SLEEP_TAGS,))
        self._barrier()

    def wake(self) -> None:
        """Take the memory back before generating (weights must be refit after a sleep)."""
        if self.trt_cfg.unload_engine_train and self.is_owner() and self._llm is not None:
            self._llm._collective_rpc("wakeup", args=(SLEEP_TAGS,))
        self._barrier()

    def close(self) -> None:
        if self._llm is not None and hasattr(self._llm, "shutdown"):
            self._llm.shutdown()
        self._llm = None
