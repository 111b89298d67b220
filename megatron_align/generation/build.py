"""From a checkpoint to something that generates or scores, in this process: megatron's groups for one
process, the model of a ``gpt`` or ``reward`` checkpoint loaded for inference, and the megatron KV-cache
backend over it, built exactly as the generation server builds its own (same context length and engine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from megatron_align.generation.errors import GenerationError
from megatron_align.generation.interface import GenerationBackend


def start_single(seed: int) -> tuple[int, int]:
    """Megatron's groups for in-process use: the ones already started (their TP, PP), else TP=PP=1 in this
    single process."""
    from megatron.core import parallel_state as ps

    from megatron_align.distributed import start
    from megatron_align.distributed.launch import detect_launch_env

    if ps.model_parallel_is_initialized():
        return ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    world = detect_launch_env().world_size
    if world != 1:
        raise GenerationError(f"in-process models run in one process (this job has {world} ranks): serve the "
                              "model (examples/nlp/language_modeling/megatron_gpt_eval.py or "
                              "examples/nlp/gpt/serve_reward_model.py) and give its url")
    start(1, 1, seed=seed)
    return 1, 1


def load_model(checkpoint: str | os.PathLike, kind: str, precision: Optional[str] = None):
    """``(model, tokenizer, model_cfg)`` of a ``kind`` (``gpt`` / ``reward``) checkpoint, loaded for inference
    in this process (``GenerationError`` for the other kind)."""
    import dataclasses

    from megatron_align.distributed.hardware import fast_precision
    from megatron_align.models.checkpoint import checkpoint_kind, load_checkpoint, read_model_config
    from megatron_align.tokenizers import load_tokenizer_from_dir

    saved_kind = checkpoint_kind(checkpoint)  # CheckpointError (one line) for a missing / incomplete one
    if saved_kind != kind:
        need = "an attribute-conditioned SFT (gpt)" if kind == "gpt" else "a reward"
        raise GenerationError(f"{checkpoint} is a {saved_kind} model checkpoint; this needs {need} model "
                         "checkpoint")
    saved = read_model_config(checkpoint)
    tp, pp = start_single(saved.seed)
    cfg = dataclasses.replace(saved, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              sequence_parallel=False, hidden_dropout=0.0, attention_dropout=0.0)
    tokenizer = load_tokenizer_from_dir(str(Path(checkpoint) / "tokenizer"))
    vocab = cfg.vocab_size or tokenizer.vocab_size
    precision = precision or fast_precision()
    if kind == "gpt":
        from megatron_align.models.gpt import build_gpt_model

        model = build_gpt_model(cfg, vocab_size=vocab, precision=precision)
    else:
        from megatron_align.models.reward import build_reward_model

        model = build_reward_model(cfg, vocab_size=vocab, precision=precision)
    load_checkpoint(checkpoint, model)
    return model.eval(), tokenizer, cfg


def make_backend(model, tokenizer, model_cfg, max_batch_size: int) -> GenerationBackend:
    """The megatron KV-cache generation engine over ``model``."""
    from megatron_align.generation.megatron_backend import MegatronGenerationBackend

    return MegatronGenerationBackend(model, tokenizer, max_batch_size=max_batch_size,
                                     max_sequence_length=model_cfg.context_length(),
                                     vocab_size=tokenizer.vocab_size)


def load_backend(checkpoint: str | os.PathLike, precision: Optional[str] = None, max_batch_size: int = 8):
    """A ``MegatronGenerationBackend`` over the ``gpt`` checkpoint, as the generation server builds it."""
    model, tokenizer, cfg = load_model(checkpoint, "gpt", precision)
    return make_backend(model, tokenizer, cfg, max_batch_size)
