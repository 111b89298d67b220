"""Reward models: the GPT trunk plus a row-parallel head with ``num_attributes`` outputs.

One class serves SteerLM's multi-attribute regression reward model (``num_attributes=9``: quality, toxicity,
humor, creativity, helpfulness, correctness, coherence, complexity, verbosity) and the Bradley-Terry reward
model (``num_attributes=1``). The head reads the final hidden state of the last real (non-padding) token of
each sequence, as NeMo-Aligner's reward models do.

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
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel import RowParallelLinear, gather_from_sequence_parallel_region

    class GPTRewardModel(GPTModel):
        """GPTModel whose post-process stage maps hidden states ``[S, B, H]`` to rewards ``[B, A]``."""

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
                    input_is_parallel=False,
                    skip_bias_add=False,
                    is_expert=False,
                )

        def _postprocess(self, hidden_states, *args, **kwargs):
            if not self.post_process:
                return hidden_states
            if self.config.sequence_parallel:
                hidden_states = gather_from_sequence_parallel_region(hidden_states)
            rewards, _ = self.rm_head(hidden_states)  # [S, B, A]
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
