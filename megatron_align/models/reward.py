"""Reward models: the GPT trunk plus a row-parallel head with ``num_attributes`` outputs.

One class serves SteerLM's multi-attribute regression reward model (``num_attributes=9``: quality, toxicity,
humor, creativity, helpfulness, correctness, coherence, complexity, verbosity) and the Bradley-Terry reward
model (``num_attributes=1``). The head reads the final hidden state of the last real (non-padding) token of
each sequence, as NeMo-Aligner's reward models do.

Checkpoints of this model record ``model_kind: reward`` in their ``metadata.json`` and ``num_attributes`` in
their ``model_config.yaml``; ``load_reward_weights`` starts a reward model from one, or from a language model
checkpoint (trunk only, the head keeps its fresh initialisation).

The language-model output layer is not built, so its ``V x H`` weights cost nothing; the head is megatron's
``RowParallelLinear`` (input split across TP ranks, partial products all-reduced), so every TP rank holds the
same ``[B, num_attributes]`` rewards.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models.gpt import cast_to_precision, gpt_model_kwargs


def _reward_model_class():
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel import (
        RowParallelLinear,
        copy_to_tensor_model_parallel_region,
        gather_from_sequence_parallel_region,
    )

    class GPTRewardModel(GPTModel):
        """GPTModel whose post-process stage maps hidden states ``[S, B, H]`` to rewards ``[B, A]``."""

        checkpoint_kind = "reward"  # recorded in metadata.json (``checkpoint.checkpoint_kind``)

        def __init__(self, *args, num_attributes: int = 1, **kwargs):
            kwargs["share_embeddings_and_output_weights"] = False
            super().__init__(*args, **kwargs)
            self.num_attributes = num_attributes
            if self.post_process:
                del self.output_layer
                # The head sees full sequences: never sequence-parallel (a new config, not a mutation).
                head_config = dataclasses.replace(self.config, sequence_parallel=False)
                self.rm_head = RowParallelLinear(
                    self.config.hidden_size,
                    num_attributes,
                    config=head_config,
                    init_method=self.config.init_method,
                    bias=True,
                    input_is_parallel=True,  # _postprocess hands it this rank's slice of H
                    skip_bias_add=False,
                    is_expert=False,
                )

        def _postprocess(self, hidden_states, *args, **kwargs):
            if not self.post_process:
                return hidden_states
            if self.config.sequence_parallel:
                hidden_states = gather_from_sequence_parallel_region(hidden_states)
            # This TP rank's slice of the hidden size, as megatron's scatter-to-TP-region would take, but
            # through copy-to-region (identity forward, all-reduce backward) + slicing: the same gradients,
            # without the scatter's backward gather, which allocates on a CUDA device even on CPU runs.
            tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
            part = hidden_states.shape[-1] // tp
            local = copy_to_tensor_model_parallel_region(hidden_states)[..., rank * part:(rank + 1) * part]
            rewards, _ = self.rm_head(local)  # [S, B, A] (partial products all-reduced over TP)
            return rewards.transpose(0, 1)  # [B, S, A]

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            """Module-wise sharded state (no LM output layer to tie or pad, so LanguageModule's logic is
            skipped)."""
            from megatron.core.transformer.module import MegatronModule
            from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

            metadata = ensure_metadata_has_dp_cp_group(metadata)
            return MegatronModule.sharded_state_dict(self, prefix, sharded_offsets, metadata)

        def forward(self, input_ids, position_ids, attention_mask=None,
                    lengths: Optional[torch.Tensor] = None, **kwargs):
            """Rewards ``[B, A]`` at the last real token (``lengths`` [B]; all tokens real when None).

            On a pipeline stage other than the last, returns the hidden states for the next stage.
            """
            out = super().forward(input_ids, position_ids, attention_mask, **kwargs)
            if not self.post_process:
                return out
            b, s, _ = out.shape
            if lengths is None:
                last = torch.full((b,), s - 1, dtype=torch.long, device=out.device)
            else:
                last = lengths.to(device=out.device, dtype=torch.long) - 1  # [B]
            return out[torch.arange(b, device=out.device), last]  # [B, A]

    return GPTRewardModel


def build_reward_model(
    cfg: ModelConfig,
    vocab_size: Optional[int] = None,
    precision="32",
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
):
    """This rank's reward-model stage, ``cfg.num_attributes`` outputs. Parallel state must be initialised."""
    cls = _reward_model_class()
    model = cls(**gpt_model_kwargs(cfg, vocab_size, precision, pre_process, post_process),
                num_attributes=cfg.num_attributes)
    return cast_to_precision(model, precision)


HEAD_PREFIX = "rm_head."
"""State-dict prefix of the reward head's weight ``[A, H]`` and bias ``[A]``."""


def load_reward_weights(path, model, load_head: bool) -> None:
    """Load a checkpoint into this rank's reward model at its current TP/PP layout.

    ``load_head=False``: the transformer trunk only (from a language model or a reward model checkpoint; an
    LM output layer in the checkpoint is ignored) and the head keeps its initialisation. ``load_head=True``:
    trunk and head, from a reward model checkpoint with the same ``num_attributes``.
    NeMo-Aligner's ``model.regression.load_rm_head_weights``.
    """
    from pathlib import Path

    from megatron.core.dist_checkpointing.validation import StrictHandling

    from megatron_align.models.checkpoint import CheckpointError, _unwrap, checkpoint_kind, read_model_config
    from megatron_align.models.dcp_reader import load_sharded

    ckpt = Path(path)
    kind = checkpoint_kind(ckpt)  # also checks that the checkpoint is complete
    module = _unwrap(model)
    if load_head:
        if kind != "reward":
            raise CheckpointError(f"{ckpt}: a {kind} checkpoint has no reward head to load; set "
                                  "model.regression.load_rm_head_weights=False to start a fresh head")
        saved = read_model_config(ckpt).num_attributes
        if saved != module.num_attributes:
            raise CheckpointError(f"{ckpt}: its reward head has {saved} outputs but "
                                  f"model.regression.num_attributes={module.num_attributes}; make them equal "
                                  "or set model.regression.load_rm_head_weights=False")
    sharded = module.sharded_state_dict()
    if not load_head:
        sharded = {k: v for k, v in sharded.items() if not k.startswith(HEAD_PREFIX)}
    # RAISE_UNEXPECTED: every requested tensor must be in the checkpoint; checkpoint tensors nobody asked for
    # (an LM output layer, a head we re-initialise) are fine.
    state = load_sharded(sharded, ckpt / "weights", strict=StrictHandling.RAISE_UNEXPECTED)
    missing, _ = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")
               and (load_head or not k.startswith(HEAD_PREFIX))]
    if missing:
        raise CheckpointError(f"{ckpt}: weights missing for {missing[:5]}")
