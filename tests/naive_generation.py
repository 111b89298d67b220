"""The independent references the server tests compare against: greedy generation by full recompute (no KV
cache, one sequence at a time, plain argmax over the tokenizer's vocabulary) and full-forward log-probs.

Written from the definitions, sharing no code with ``megatron_align.generation`` or the servers.
"""

from __future__ import annotations

import torch


def _logits(model, ids: list[int]) -> torch.Tensor:
    tok = torch.tensor([ids])  # [1, S]
    pos = torch.arange(len(ids)).unsqueeze(0)
    with torch.no_grad():
        return model(tok, pos, None, runtime_gather_output=True)[0].float()  # [S, V_padded]


def greedy(model, tokenizer, prompt_ids: list[int], max_new: int, end_strings=()) -> list[int]:
    """Prompt + greedily generated ids; stops after eos or once the generated text ends with an end string."""
    model.eval()
    ids = list(prompt_ids)
    for _ in range(max_new):
        nxt = int(_logits(model, ids)[-1, :tokenizer.vocab_size].argmax())
        ids.append(nxt)
        text = tokenizer.ids_to_text(ids[len(prompt_ids):], skip_special=False)
        if nxt == tokenizer.eos_id or any(s and text.endswith(s) for s in end_strings):
            break
    return ids


def logprobs(model, ids: list[int]) -> tuple[list[float], torch.Tensor]:
    """log p(ids[t] | ids[:t]) for t >= 1, over the padded vocabulary, and the full log-softmax rows
    ``[len - 1, V_padded]``."""
    model.eval()
    full = torch.log_softmax(_logits(model, ids)[:-1], dim=-1)  # [S-1, V]
    return full[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist(), full
