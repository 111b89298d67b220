"""Forward-only passes the servers run on one model replica (collective over its TP/PP ranks).

- ``token_logprobs_of``: log p(x_t | x_<t) of every token of each sequence but the first (NeMo's ``logprob``)
  and, with ``all_probs``, the whole log-softmax row at every position (NeMo's ``full_logprob``), from one
  causal-LM forward. The softmax runs over the model's (padded) output vocabulary, as the training loss
  does; ``full_logprob`` rows are cut to the tokenizer's vocabulary.
- ``rewards_of``: the reward model's ``[B, A]`` values at each sequence's last real token.

Sequences are right-padded (causal attention: padding after a sequence never changes its values), cut into
micro-batches and run through megatron's pipeline schedule (``forward_only``); the last stage's results are
broadcast over the pipeline group, so every rank of the replica returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from megatron_align.distributed.launch import compute_device


def _pad(seqs: list[list[int]], pad_id: int, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B', S]`` (B' rounded up to ``multiple`` with copies of row 0) and lengths ``[B']``."""
    rows = _round_up(list(seqs), multiple)
    width = max(len(s) for s in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B', S]
    for i, s in enumerate(rows):
        tokens[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens, torch.tensor([len(s) for s in rows], dtype=torch.long)


def _round_up(rows: list, multiple: int) -> list:
    """``rows`` plus copies of its first entry up to a multiple of ``multiple``."""
    return rows + [rows[0]] * (-len(rows) % multiple)


def _forward_only(model, tokens: torch.Tensor, lengths: torch.Tensor, micro_batch_size: int,
                  head: Callable, extra_inputs: Callable[[torch.Tensor], dict],
                  starts: Optional[torch.Tensor] = None) -> list:
    """``head(output, micro_batch)`` of each micro-batch (a dict: ``tokens``, ``lengths``, ``starts``), on the
    last stage ([] elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    dev = compute_device()
    b, s = tokens.shape
    batches = []
    for i in range(0, b, micro_batch_size):
        tok = tokens[i:i + micro_batch_size].to(dev)  # [mbs, S]
        batches.append({"tokens": tok, "lengths": lengths[i:i + micro_batch_size].to(dev),
                        "starts": None if starts is None else starts[i:i + micro_batch_size],
                        "position_ids": torch.arange(s, device=dev).unsqueeze(0).expand_as(tok).contiguous()})

    def step(data_iterator, module):
        mb = next(data_iterator)
        out = module(mb["tokens"], mb["position_ids"], None, **extra_inputs(mb["lengths"]))

        def collect(output, non_loss_data=True):
            return head(output, mb)

        return out, collect

    model.eval()
    with torch.no_grad():
        return get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(batches), model=[model], num_microbatches=len(batches),
            seq_length=s, micro_batch_size=micro_batch_size, forward_only=True, collect_non_loss_data=True)


def _from_last_stage(result: Optional[torch.Tensor], shape: tuple, dtype=torch.float32) -> torch.Tensor:
    """The last pipeline stage's ``result`` on every stage of this pipeline (a no-op without PP)."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return result
    buf = result.contiguous() if ps.is_pipeline_last_stage(ignore_virtual=True) else torch.empty(
        shape, dtype=dtype, device=compute_device())
    torch.distributed.broadcast(buf, src=ps.get_pipeline_model_parallel_last_rank(),
                                group=ps.get_pipeline_model_parallel_group())
    return buf


def token_logprobs_of(model, seqs: list[list[int]], pad_id: int, vocab_size: int, micro_batch_size: int = 4,
                      all_probs: bool = False, temperature: float = 1.0, sampling=None,
                      starts: Optional[list[int]] = None) -> tuple[list[list[float]], Optional[list]]:
    """Per sequence: ``len - 1`` log-probs of tokens 1.. given the tokens before (of softmax(logits /
    ``temperature``)), and (``all_probs``) ``len - 1`` rows of ``vocab_size`` log-probs (of the raw logits);
    every rank of the replica gets them.

    sampling: a ``logprobs.sampling.ChoiceRules``: the log-probs of tokens ``starts[i]..`` of sequence i are
        those of the sampling distribution instead (every processor, ``sampling_token_logprobs``; -inf for a
        token it excludes), as if ``seqs[i][:starts[i]]`` were the prompt and the rest had been sampled.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_align.logprobs import token_logprobs
    from megatron_align.logprobs.sampling import sampling_token_logprobs

    n = len(seqs)
    tokens, lengths = _pad(seqs, pad_id, micro_batch_size)
    b, s = tokens.shape
    tp_group = ps.get_tensor_model_parallel_group()
    if sampling is not None and (starts is None or len(starts) != n):
        raise ValueError("sampling log-probs need one start per sequence")
    start_rows = None if sampling is None else torch.tensor(_round_up(list(starts), micro_batch_size))

    def head(logits, mb):  # logits [mbs, S, V/tp]
        tok = mb["tokens"]
        lp = token_logprobs(logits[:, :-1].float(), tok[:, 1:], tp_group=tp_group,
                            temperature=temperature)  # [mbs, S-1] of softmax(logits / temperature)
        full = None
        if all_probs or sampling is not None:
            full = gather_from_tensor_model_parallel_region(logits.float())  # [mbs, S, V]
        if sampling is not None:
            for r in range(tok.size(0)):
                lo, hi = int(mb["starts"][r]), int(mb["lengths"][r])
                if lo < hi:
                    lp[r, lo - 1:hi - 1] = sampling_token_logprobs(full[r, :hi], tok[r, :hi], lo, sampling)
        if not all_probs:
            return lp, None
        return lp, torch.log_softmax(full, dim=-1)[:, :-1, :vocab_size]  # [mbs, S-1, vocab]

    outs = _forward_only(model, tokens, lengths, micro_batch_size, head,
                         lambda _lengths: {"runtime_gather_output": False}, start_rows)
    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    lp = _from_last_stage(torch.cat([o[0] for o in outs]) if last else None, (b, s - 1))  # [B', S-1]
    full = None
    if all_probs:
        full = _from_last_stage(torch.cat([o[1] for o in outs]) if last else None,
                                (b, s - 1, vocab_size))  # [B', S-1, vocab]
    lp_rows = [lp[i, :len(seqs[i]) - 1].tolist() for i in range(n)]
    full_rows = [full[i, :len(seqs[i]) - 1].tolist() for i in range(n)] if all_probs else None
    return lp_rows, full_rows


def rewards_of(model, seqs: list[list[int]], pad_id: int, num_attributes: int,
               micro_batch_size: int = 4) -> list[list[float]]:
    """Per sequence, the reward model's ``num_attributes`` values at its last token (every replica rank)."""
    from megatron.core import parallel_state as ps

    n = len(seqs)
    tokens, lengths = _pad(seqs, pad_id, micro_batch_size)
    outs = _forward_only(model, tokens, lengths, micro_batch_size,
                         lambda rewards, _mb: rewards.float(),  # [mbs, A]
                         lambda lens: {"lengths": lens})
    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    rewards = _from_last_stage(torch.cat(outs) if last else None,
                               (tokens.shape[0], num_attributes))  # [B', A]
    return rewards[:n].tolist()
