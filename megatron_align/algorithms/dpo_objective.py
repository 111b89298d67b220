"""The preference step's forward: a micro-batch of all sequences of its pairs / groups through the model,
per-sequence log-probs, and the loss (formulas: ``losses/preference.py``).

Policy and reference are scored by the same function on the same micro-batch tensors (``sequence_logps``),
so at step 0 - reference weights equal to the policy's - both give bit-identical values and the dpo loss is
exactly ln 2 at any TP/PP and micro-batch size (NeMo-Aligner #227: its reference pass re-batched the rows).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from megatron_align.config.stages.dpo import EXO_LOSSES, DPOConfig
from megatron_align.distributed.launch import compute_device
from megatron_align.losses.preference import PREFERENCE_METRICS, PreferenceSpec, preference_objective
from megatron_align.losses.reduce import megatron_loss
from megatron_align.training.sequence_logps import on_device, score_rows, sequence_logps


def spec_of(cfg: DPOConfig) -> PreferenceSpec:
    d = cfg.model.dpo
    sft_avg = d.preference_average_log_probs if d.sft_average_log_probs is None else d.sft_average_log_probs
    return PreferenceSpec(loss=d.preference_loss, beta=d.ref_policy_kl_penalty,
                          average_log_probs=d.preference_average_log_probs, sft_average_log_probs=sft_avg,
                          gt_reward_scale=d.gt_reward_scale, preference_loss_weight=d.preference_loss_weight,
                          sft_loss_weight=d.sft_loss_weight, beta_r=d.beta_r,
                          beta_pi=d.ref_policy_kl_penalty if d.beta_pi is None else d.beta_pi)


class PreferenceObjective:
    """What one run optimizes and how its per-micro-batch metric sums read."""

    def __init__(self, cfg: DPOConfig):
        self.spec = spec_of(cfg)
        self.exo = self.spec.loss in EXO_LOSSES
        self.temperature = cfg.model.dpo.temp if self.exo else 1.0  # EXO scores both models at temp

    def sequence_logps(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """sum_t m_t log p(y_t) per row [R] from the vocab-parallel logits [R, S, V/tp]."""
        return sequence_logps(logits, batch, self.temperature)

    def loss_func(self, batch: dict, logits: torch.Tensor):
        policy = self.sequence_logps(logits, batch)  # [R]
        total, sums = preference_objective(self.spec, policy, batch["ref_logps"], batch["loss_mask"].sum(-1),
                                           batch["rewards"], batch["offsets"], batch["ignored"])
        return megatron_loss(total.sum(), torch.tensor(float(total.numel()), device=total.device), pref=sums)

    def forward_step(self, data_iterator, model):
        """megatron forward_step_func of training and validation."""
        batch = on_device(next(data_iterator))
        logits = model(batch["tokens"], batch["position_ids"], None)  # [R, S, V/tp] on the last stage
        return logits, partial(self.loss_func, batch)

    def reduce(self, sums: dict) -> np.ndarray:
        """All-reduce this rank's sums (zeros off the last pipeline stage), counted once per TP group."""
        from megatron.core import parallel_state as ps

        local = sums.get("pref")
        vec = torch.zeros(len(PREFERENCE_METRICS), dtype=torch.float64) if local is None else local.double()
        vec = vec.to(compute_device())
        torch.distributed.all_reduce(vec)
        return vec.cpu().numpy() / ps.get_tensor_model_parallel_world_size()

    def metrics(self, vec: np.ndarray, prefix: str = "") -> dict:
        """Readable metrics from reduced sums: means over pairs (EXO: groups)."""
        v = dict(zip(PREFERENCE_METRICS, vec))
        g = v["groups"]
        if g <= 0:
            return {}
        out = {"preference_loss": v["preference_loss"] / g, "sft_loss": v["sft_loss"] / g,
               "rewards_chosen_mean": v["chosen_reward"] / g,
               "rewards_rejected_mean": v["rejected_reward"] / g,
               "margin": (v["chosen_reward"] - v["rejected_reward"]) / g, "accuracy": v["correct"] / g,
               "kl_chosen": v["kl_chosen"] / g, "ignored_pairs": v["ignored"]}
        if self.exo:
            out.update(entropy_pf=v["entropy_pf"] / g, kl_pf_pr=v["kl_pf_pr"] / g)
        return {f"{prefix}{k}": float(x) for k, x in out.items()}


def reference_logps(objective: PreferenceObjective, ddp, microbatches: list, seq_length: int,
                    rows: int) -> list:
    """Forward only over ``microbatches`` with whatever weights the model holds: per micro-batch the rows'
    sequence log-probs ``float32 [R]`` on the CPU (zeros off the last pipeline stage)."""
    return score_rows(ddp, microbatches, seq_length, rows, objective.temperature)
