"""Preference datasets: records (``data/preference.py``) tokenized into groups of sequences, and batches.

An item is one prompt with its completions, each ``prompt + completion`` tokenized whole (``encode_rendered``:
the completion's tokens are the targets; a token merging across the boundary is a target and is counted as
``boundary_merge`` where NeMo-Aligner asserts):

* DPO family: NeMo-Aligner's ``{prompt, chosen_response, rejected_response[, *_reward]}`` or the EXO
  repository's ``{prompt, chosen, rejected}``: two sequences, chosen first.
* EXO: any of the EXO formats with rewards (``{prompt, completions, rewards}``, or a pair through
  ``pref_to_rw``), or a NeMo-Aligner pair: K sequences, cut into K / ``num_contrastive`` groups.

A chat prompt (a list of messages) is rendered in NeMo's template from ``model.data.chat_prompt_tokens`` as
NeMo-Aligner's ``DPOModelDataset`` does: the prompt ends after the last user turn, and the response adds
``{turn_start}Assistant{end_of_name}{response}{end_of_turn}{turn_start}`` - so the assistant header and the
closing marker are trained, as there.

Files: JSONL, or a JSON array (the EXO repository's ``train.json`` / ``test.json``), by content.

Over-length (longest sequence > ``seq_length``), ``model.data.overlong``:
``ignore`` (NeMo-Aligner): kept, every sequence cut to its first 32 tokens with no trained token - the item
adds ln 2 (dpo) to the loss and no gradient, and stays in the mean; ``truncate``: completions cut from the
right, the prompt kept (a prompt that leaves no completion token is dropped); ``drop``: replaced by the next
record. Every case is counted in the file's report; no item ever has an empty completion.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import SYSTEM_NAME
from megatron_align.data.preference import (
    CompletionGroup,
    check_contrastive,
    parse_dpo_record,
    parse_exo_record,
)
from megatron_align.data.record_file import RecordFile
from megatron_align.data.tokenize import Rendered, encode_rendered

logger = logging.getLogger(__name__)

IGNORED_LENGTH = 32
"""Tokens an ignored over-length sequence keeps (NeMo-Aligner's ``nograd_length``)."""


@dataclass
class PreferenceRules:
    """How records become items."""

    seq_length: int
    """Longest sequence in tokens (``model.data.seq_length``)."""
    overlong: str = "ignore"
    """ignore | truncate | drop (module docstring)."""
    append_eod: bool = False
    """Append eos (trained) to every completion."""
    on_bad_record: str = "error"
    """``error``: stop at the first malformed record (``file:line: field: problem``); ``skip``: count it."""
    default_chosen_reward: float = 1.0
    default_rejected_reward: float = 0.0
    chat_prompt_tokens: ChatPromptTokens = field(default_factory=ChatPromptTokens)
    """Markers of NeMo's chat template, for prompts given as messages."""
    num_contrastive: int = 0
    """0: pairs (the DPO family); K >= 2: EXO groups of K completions."""
    loss: str = "dpo"
    """``model.dpo.preference_loss`` (named in errors)."""


@dataclass
class PreferenceItem:
    """One prompt's sequences (each ``prompt + completion``) in groups."""

    sequences: list
    """``int64 [T_i]`` token ids per completion."""
    targets: list
    """``bool [T_i]`` per completion: token ``t`` is trained (the completion's tokens)."""
    rewards: np.ndarray
    """``float32 [K]`` the data's rewards (chosen / rejected rewards of a pair)."""
    group_size: int
    """Completions per group (2 for pairs); ``K / group_size`` groups."""
    ignored: bool = False
    """Over-length under ``overlong=ignore``: no trained token."""
    source: str = ""
    """``file:line``."""

    @property
    def num_groups(self) -> int:
        return len(self.sequences) // self.group_size


def _chat_prompt_text(messages: list, t: ChatPromptTokens) -> str:
    """NeMo-Aligner's rendering of a chat prompt (system turn, then the turns; no trailing header)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    parts = [f"{t.system_turn_start}{SYSTEM_NAME}{t.end_of_name}{system}{t.end_of_turn}"]
    for m in messages:
        if m["role"] != "system":
            parts.append(f"{t.turn_start}{m['role'].capitalize()}{t.end_of_name}{m['content']}{t.end_of_turn}")
    return "".join(parts)


class PreferenceFile(RecordFile):
    """One file of preference records; ``item(k)`` is record ``k`` tokenized, or None (counted)."""

    def __init__(self, path, tokenizer, rules: PreferenceRules, index_dir: Optional[str] = None):
        super().__init__(path, rules.on_bad_record, index_dir)
        self.rules, self.tokenizer = rules, tokenizer

    def _texts(self, obj: object) -> tuple[str, list, list, np.ndarray, int]:
        """(prompt text, completion texts, their field names, rewards, group size) of a record
        (``RecordError`` for the first problem)."""
        r = self.rules
        k = r.num_contrastive or 2
        if isinstance(obj, dict) and "chosen_response" in obj:
            pair = parse_dpo_record(obj, r.default_chosen_reward, r.default_rejected_reward)
            prompt, completions = pair.prompt, [pair.chosen, pair.rejected]
            names = ["chosen_response", "rejected_response"]
            group = CompletionGroup("", completions, [pair.chosen_reward, pair.rejected_reward])
        else:
            group = parse_exo_record(obj)
            prompt, completions = group.prompt, group.completions
            names = ([f"completions[{i}]" for i in range(len(completions))] if "completions" in obj
                     else ["chosen", "rejected"])
            if not r.num_contrastive and (len(completions) != 2 or group.rewards is None):
                raise RecordError("rejected" if "chosen" in obj else "completions",
                                  f"preference_loss={r.loss} trains on pairs: give chosen_response and "
                                  "rejected_response (or chosen and rejected)")
        if r.num_contrastive:
            check_contrastive(group, r.num_contrastive, r.loss)
        if isinstance(prompt, list):
            t = r.chat_prompt_tokens
            prompt = _chat_prompt_text(prompt, t)
            completions = [f"{t.turn_start}Assistant{t.end_of_name}{c}{t.end_of_turn}{t.turn_start}"
                           for c in completions]
        return prompt, completions, names, np.asarray(group.rewards, dtype=np.float32), k

    def parse(self, obj: object, k: int) -> Optional[PreferenceItem]:
        """Record ``k`` as an item (``RecordError`` when malformed); None when dropped (counted)."""
        prompt, completions, names, rewards, group_size = self._texts(obj)
        where = self.file.where(k)
        seqs, targets = [], []
        for i, c in enumerate(completions):
            text = Rendered(prompt + c, ((len(prompt), len(prompt) + len(c)),))
            enc = encode_rendered(text, self.tokenizer, add_eos=self.rules.append_eod)
            if enc.boundary_merges:
                self.report.add("boundary_merge", f"{where}: {names[i]}: a token spans the end of the prompt "
                                "and the start of the completion (trained; NeMo-Aligner stops here)",
                                key=(k, i))
            if not enc.target_mask[1:].any():
                raise RecordError(names[i], "no token after the prompt (an empty response)")
            seqs.append(enc.ids)
            targets.append(enc.target_mask)
        item = PreferenceItem(seqs, targets, rewards, group_size, source=where)
        return self._fit(k, item)

    def _fit(self, k: int, item: PreferenceItem) -> Optional[PreferenceItem]:
        limit, how = self.rules.seq_length, self.rules.overlong
        longest = max(len(s) for s in item.sequences)
        if longest <= limit:
            return item
        what = f"{item.source}: {longest} tokens > model.data.seq_length={limit}"
        if how == "drop":
            self.report.add("over_length_dropped", f"{what} (replaced by the next record)", key=k)
            return None
        if how == "ignore":
            self.report.add("over_length_ignored", f"{what} (kept untrained, as NeMo-Aligner does)", key=k)
            item.sequences = [s[:IGNORED_LENGTH] for s in item.sequences]
            item.targets = [np.zeros(min(len(t), IGNORED_LENGTH), dtype=bool) for t in item.targets]
            item.ignored = True
            return item
        seqs, targets = [], []
        for s, t in zip(item.sequences, item.targets):
            s, t = s[:limit], t[:limit]
            if not t[1:].any():
                self.report.add("over_length_prompt", f"{what}: the prompt alone fills seq_length (dropped, "
                                "replaced by the next record)", key=k)
                return None
            seqs.append(s)
            targets.append(t)
        self.report.add("over_length_truncated", f"{what} (completions cut from the right)", key=k)
        item.sequences, item.targets = seqs, targets
        return item


def collate_rows(seqs: Sequence[np.ndarray], targets: Sequence[np.ndarray], pad_id: int,
                 seq_length: Optional[int] = None, pad_to_multiple_of: int = 16) -> dict:
    """Sequences ``[T_i]`` with their trained-token masks -> right-padded rows: ``tokens`` /
    ``position_ids`` / ``labels`` ``int64 [R, S]`` (labels: the next token), ``loss_mask`` ``float32 [R, S]``
    (1 where the next token is trained), ``lengths`` ``int64 [R]``. ``S`` is ``seq_length`` when given
    (pipeline parallelism), else the longest row rounded up to ``pad_to_multiple_of``."""
    longest = max(len(s) for s in seqs)
    m = max(1, pad_to_multiple_of)
    width = seq_length if seq_length is not None else max(m, -(-longest // m) * m)
    if longest > width:
        raise ValueError(f"a sequence of {longest} tokens does not fit seq_length={width}")
    r = len(seqs)
    tokens = np.full((r, width), pad_id, dtype=np.int64)  # [R, S]
    labels = np.full((r, width), pad_id, dtype=np.int64)  # [R, S]
    mask = np.zeros((r, width), dtype=np.float32)  # [R, S]
    for i, (s, t) in enumerate(zip(seqs, targets)):
        n = len(s)
        tokens[i, :n] = s
        labels[i, :n - 1] = s[1:]
        mask[i, :n - 1] = t[1:]
    positions = torch.arange(width, dtype=torch.int64).unsqueeze(0).expand(r, -1)  # [R, S]
    return {"tokens": torch.from_numpy(tokens), "position_ids": positions.contiguous(),
            "labels": torch.from_numpy(labels), "loss_mask": torch.from_numpy(mask),
            "lengths": torch.tensor([len(s) for s in seqs], dtype=torch.int64)}


def collate_preference(items: Sequence[PreferenceItem], pad_id: int, seq_length: Optional[int] = None,
                       pad_to_multiple_of: int = 16) -> dict:
    """Items -> one micro-batch of all their sequences, item after item (``collate_rows``), plus
    ``rewards`` ``float32 [R]``, ``offsets`` ``int64 [G + 1]`` (each group's first row) and ``ignored``
    ``bool [G]``."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    batch = collate_rows([s for it in items for s in it.sequences], [t for it in items for t in it.targets],
                         pad_id, seq_length, pad_to_multiple_of)
    offsets, ignored = [0], []
    for it in items:
        for _ in range(it.num_groups):
            offsets.append(offsets[-1] + it.group_size)
            ignored.append(it.ignored)
    batch.update(rewards=torch.from_numpy(np.concatenate([it.rewards for it in items]).astype(np.float32)),
                 offsets=torch.tensor(offsets, dtype=torch.int64),
                 ignored=torch.tensor(ignored, dtype=torch.bool))
    return batch
