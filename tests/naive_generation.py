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


def is_greedy_continuation(model, tokenizer, prompt_len: int, ids: list[int], tie_tol: float = 1e-4) -> bool:
    """``ids`` (prompt + generated) is a greedy sequence of ``model``: every generated token's logit is within
    ``tie_tol`` of the row's maximum (argmax up to ties, which batched and unbatched matmuls may break
    differently on a random tiny model)."""
    model.eval()
    if len(ids) <= prompt_len:
        return True
    logits = _logits(model, ids)[:, :tokenizer.vocab_size]  # [S, V]
    for t in range(prompt_len, len(ids)):
        row = logits[t - 1]
        if float(row.max() - row[ids[t]]) > tie_tol:
            return False
    return True


def logprobs(model, ids: list[int]) -> tuple[list[float], torch.Tensor]:
    """log p(ids[t] | ids[:t]) for t >= 1, over the padded vocabulary, and the full log-softmax rows
    ``[len - 1, V_padded]``."""
    model.eval()
    full = torch.log_softmax(_logits(model, ids)[:-1], dim=-1)  # [S-1, V]
    return full[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist(), full
