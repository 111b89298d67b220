"""Reward-model losses: SteerLM's masked multi-attribute regression and the Bradley-Terry pair losses.

Pure tensor functions (``regression_terms``, ``bt_pair_losses``) plus the megatron ``loss_func`` wrappers the
reward-model stage hands to the pipeline schedules, reduced as ``losses.reduce`` says: one mean over the whole
global batch - per valid label cell (regression) or per pair (Bradley-Terry) - whatever the micro-batch / DP
split.

Conventions, as NeMo-Aligner's ``MegatronGPTRegressionRewardModel`` and ``MegatronGPTRewardModel`` define
them:

* regression: a label cell equal to ``loss_mask_val`` (-100) is missing and contributes nothing;
* pairs are consecutive rows ``(2i, 2i + 1)``; the pair's preference is the first row's label column 0
  (HelpSteer2-Preference's ``preference_strength`` in the ``quality`` slot): ``< 0`` the first response is
  preferred, ``>= 0`` the second one (a tie counts the second as chosen); its magnitude is the margin / scale;
* a pair's score is the reward head's output ``score_attribute`` (NeMo hard-codes 4, the ``helpfulness`` slot
  that stage 1 of HelpSteer2-Preference trains);
* binary ranking (``{prompt, chosen, rejected}``) is the pair loss with preference -1 (first row = chosen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_align.config.stages.reward_model import BT_LOSS_FUNCS
from megatron_align.losses.reduce import megatron_loss

MASK_VALUE = -100.0
"""NeMo's ``model.regression.loss_mask_val``: a missing attribute."""


def regression_terms(pred: torch.Tensor, labels: torch.Tensor, mask_val: float = MASK_VALUE):
    """``pred`` ``[B, A]``, ``labels`` ``[B, A]`` -> (squared-error sum, valid cells, |error| sums ``[A]``,
    valid cells ``[A]``).

    SteerLM (Dong et al. 2023, arXiv:2310.05344), attribute prediction model / HelpSteer2 (Wang et al. 2024,
    arXiv:2406.08673), regression reward model: MSE over the attribute values,
    ``sum_{b,a} m_ba (r_ba - y_ba)^2 / sum_{b,a} m_ba`` with ``m_ba = [y_ba != -100]``. Masked cells are
    removed with ``where`` (not multiplied by 0), so a non-finite prediction in a masked cell cannot turn the
    loss into NaN.
    """
    mask = labels != mask_val  # [B, A]
    diff = torch.where(mask, pred.float() - labels.float(), torch.zeros((), device=pred.device))  # [B, A]
    counts = mask.sum(dim=0).to(torch.float32)  # [A]
    return (diff * diff).sum(), counts.sum(), diff.detach().abs().sum(dim=0), counts


def regression_loss(pred: torch.Tensor, labels: torch.Tensor, mask_val: float = MASK_VALUE) -> torch.Tensor:
    """Mean squared error over the valid cells of one batch; 0 (with zero gradients) when all are masked."""
    sq_sum, n, _, _ = regression_terms(pred, labels, mask_val)
    return sq_sum / n.clamp(min=1.0)


def bt_pair_losses(first: torch.Tensor, second: torch.Tensor, preference: torch.Tensor, loss_func: str):
    """Per-pair losses ``[P]`` and the (chosen, rejected) scores ``[P]`` of pairs ``(first, second)``.

    ``preference`` ``[P]``: ``< 0`` first preferred, ``>= 0`` second; margin ``m = |preference|``. With
    ``d = r_chosen - r_rejected``:

    * ``regular_bt``: ``-log sigmoid(d)`` - Bradley & Terry (1952); InstructGPT (Ouyang et al. 2022,
      arXiv:2203.02155) eq. 1;
    * ``margin_bt``: ``-log sigmoid(d - m)`` - Llama 2 (Touvron et al. 2023, arXiv:2307.09288) eq. 2;
    * ``scaled_bt``: ``-m log sigmoid(d)`` - HelpSteer2-Preference (Wang et al. 2024, arXiv:2410.01257),
      "Scaled Bradley-Terry".
    """
    first_wins = preference < 0  # [P]
    chosen = torch.where(first_wins, first, second)  # [P]
    rejected = torch.where(first_wins, second, first)  # [P]
    margin = preference.abs().to(chosen.dtype)  # [P]
    d = chosen - rejected  # [P]
    if loss_func == "regular_bt":
        loss = -F.logsigmoid(d)
    elif loss_func == "margin_bt":
        loss = -F.logsigmoid(d - margin)
    elif loss_func == "scaled_bt":
        loss = -margin * F.logsigmoid(d)
    else:
        raise ValueError(f"loss_func={loss_func!r} is not one of {'|'.join(BT_LOSS_FUNCS)}")
    return loss, chosen, rejected


# ------------------------------------------------------------------------------------------------------------
# megatron loss_func wrappers: (loss_sum, count, reduced dict); ``reduced["rm"]`` carries the metric sums
# ------------------------------------------------------------------------------------------------------------
def regression_metric_size(num_attributes: int) -> int:
    """Length of the ``rm`` metric vector of ``regression_loss_func``: |error| sums [A] and counts [A]."""
    return 2 * num_attributes


def regression_loss_func(labels: torch.Tensor, mask_val: float, output: torch.Tensor):
    """``output``: rewards ``[B, A]`` of the last pipeline stage; ``labels`` ``[B, A]``."""
    labels = labels.to(output.device)
    sq_sum, n, abs_err, counts = regression_terms(output, labels, mask_val)
    return megatron_loss(sq_sum, n, rm=torch.cat([abs_err, counts]))


PAIR_METRICS = ("pairs", "decided", "correct", "chosen_sum", "rejected_sum", "chosen_sq_sum",
                "rejected_sq_sum")
"""Entries of the ``rm`` metric vector of ``pair_loss_func`` (``decided``: pairs that are not ties)."""


def pair_loss_func(preference: torch.Tensor, loss_func: str, score_attribute: int, output: torch.Tensor):
    """``output``: rewards ``[2P, A]`` with pair ``i`` in rows ``(2i, 2i + 1)``; ``preference`` ``[P]``."""
    scores = output[:, score_attribute].float().view(-1, 2)  # [P, 2]
    preference = preference.to(output.device)
    loss, chosen, rejected = bt_pair_losses(scores[:, 0], scores[:, 1], preference, loss_func)
    decided = preference != 0  # [P]
    c, r = chosen.detach(), rejected.detach()
    metrics = torch.stack([
        torch.tensor(float(len(loss)), device=c.device), decided.sum().float(),
        ((c > r) & decided).sum().float(), c.sum(), r.sum(), (c * c).sum(), (r * r).sum()])
    return megatron_loss(loss.sum(), torch.tensor(float(len(loss)), device=c.device), rm=metrics)
