"""Packed rows train exactly like padded rows: same loss and gradients for the same samples (position ids
restart per sample, attention stays inside each sample, the loss mask never crosses samples)."""

import numpy as np
import torch

from megatron_align.data.collate import collate, collate_packed
from megatron_align.data.packing import pack_samples
from megatron_align.data.sft_dataset import Sample


def _samples(n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        length = int(rng.integers(5, 14))
        ids = rng.integers(0, vocab, length).astype(np.int64)
        target = np.zeros(length, dtype=bool)
        target[length // 2:] = True  # second half is the "answer"
        out.append(Sample(input_ids=ids, target_mask=target, source=f"mem:{k}"))
    return out


def test_packed_equals_padded_loss_and_gradients(megatron_single):
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.training.schedule import forward_backward
    from megatron_align.training.setup import prepare_for_training
    from tests.helpers import tiny_llama

    cfg = tiny_llama()
    cfg.optim.name = "adamw"
    model = build_gpt_model(cfg)
    ddp, _ = prepare_for_training(model, cfg.optim, "32")
    samples = _samples(6, 1000)

    def run(microbatches, mbs):
        ddp.zero_grad_buffer()
        res = forward_backward([ddp], microbatches, len(microbatches), 32, mbs)
        grads = {n: p.main_grad.clone() for n, p in model.named_parameters()}
        return res["loss_sum"] / res["num_tokens"], res["num_tokens"], grads

    padded = [collate(samples[i:i + 2], pad_id=0, seq_length=32) for i in range(0, 6, 2)]
    rows = pack_samples(samples, 32)
    assert len(rows) < 6 and max(len(r.seq_lengths) for r in rows) > 1  # really packed
    packed = [collate_packed(rows[i:i + 2], pad_id=0, seq_length=32) for i in range(0, len(rows), 2)]
    loss_a, tok_a, g_a = run(padded, 2)
    loss_b, tok_b, g_b = run(packed, 2)
    assert tok_a == tok_b
    assert abs(loss_a - loss_b) <= 1e-5 * abs(loss_a)
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-4, atol=1e-6)
