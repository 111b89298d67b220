"""Training batches are collated on the CPU and must reach the model on the compute device (the CUDA device on
a GPU machine, where megatron's forward would otherwise receive CPU tensors): the SFT forward step moves them.
Checked with the "meta" device standing in for CUDA."""

import pytest
import torch

from megatron_align.data.collate import Batch
from megatron_align.distributed import compute_device
from megatron_align.training import schedule


def test_compute_device_is_the_cpu_without_cuda():
    assert compute_device() == (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                else torch.device("cpu"))


@pytest.mark.parametrize("as_dict", [False, True])
def test_lm_forward_step_moves_the_batch_to_the_compute_device(monkeypatch, as_dict):
    monkeypatch.setattr(schedule, "compute_device", lambda: torch.device("meta"))
    b, s = 2, 5
    batch = Batch(tokens=torch.zeros(b, s, dtype=torch.long), labels=torch.zeros(b, s, dtype=torch.long),
                  loss_mask=torch.ones(b, s), position_ids=torch.arange(s).expand(b, s),
                  lengths=torch.full((b,), s))
    if as_dict:  # megatron-style callers hand plain dicts of tensors
        batch = {k: getattr(batch, k) for k in ("tokens", "labels", "loss_mask", "position_ids")}
    seen = {}

    def model(tokens, position_ids, mask, labels):
        seen.update(tokens=tokens.device, position_ids=position_ids.device, labels=labels.device)
        return torch.zeros(b, s, device="meta")

    output, loss_fn = schedule.lm_forward_step(iter([batch]), model)
    assert set(seen.values()) == {torch.device("meta")}, seen
    assert output.device.type == "meta"
