"""One JSONL file of SFT records as tokenized samples: read lazily, validated, templated, fitted to length.

``SFTFile(path, tokenizer, SampleRules(...))`` reads record ``k`` on demand (``JsonlFile``), validates it for
its format (NeMo chat, or prompt/answer through a ``PromptTemplate``), renders it with the chat or prompt
template, tokenizes the whole text once (``encode_rendered``) and applies the length rules
(``truncation.fit_to_length``). ``sample(k)`` returns a ``Sample`` or None when the record is skipped or the
sample dropped; every such case is counted in ``SFTFile.report`` (a ``DataReport``) with its ``file:line``.
With ``on_bad_record="error"`` a malformed line raises ``DataError`` instead.

Counters live in the process that reads: with data-loader worker processes each worker counts its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data import truncation
from megatron_align.data.errors import DataError, DataReport, RecordError, check_on_bad_record
from megatron_align.data.hf_chat import JinjaChatTemplate
from megatron_align.data.jsonl import JsonlFile
from megatron_align.data.nemo_chat import ROLES, ChatRecord, parse_chat_record, render_chat
from megatron_align.data.prompt_template import PLACEHOLDER, PromptTemplate, default_template
from megatron_align.data.tokenize import encode_rendered

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """One tokenized training sample."""

    input_ids: np.ndarray
    """``int64 [T]`` token ids."""
    target_mask: np.ndarray
    """``bool [T]``: token ``t`` is trained (the prediction of token ``t`` from tokens ``< t`` is scored);
    collation turns it into the label-aligned ``loss_mask``."""
    source: str = ""
    """``file:line`` of the record."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SampleRules:
    """How records become samples (the per-split keys of ``model.data.*``)."""

    chat: bool = False
    """NeMo chat records (True) or prompt/answer records (False)."""
    chat_template: str = "nemo"
    """``nemo`` (extra_id template from ``prompt_tokens``), ``tokenizer`` (its Jinja template) or a Jinja
    template."""
    prompt_tokens: ChatPromptTokens = field(default_factory=ChatPromptTokens)
    """Markers of the NeMo chat template."""
    prompt_template: str | None = None
    """Prompt/answer records: the template; None: chosen from the first record (``prompt_template``)."""
    label_key: str | None = None
    """Prompt/answer records: the answer field; None: the one of the default template."""
    max_seq_length: int = 2048
    """Longest sample (tokens)."""
    min_seq_length: int = 1
    """Shorter samples are dropped."""
    truncation_method: str = "right"
    """``left`` | ``right`` | ``drop`` (``data/truncation.py``)."""
    min_target_tokens: int = 1
    """Trained tokens a truncated sample must keep."""
    add_bos: bool = False
    """Prepend bos."""
    add_eos: bool = True
    """Append eos (trained after an answer)."""
    on_bad_record: str = "error"
    """``error`` | ``skip``."""
    roles: Sequence[str] = ROLES
    """Roles a chat record may use."""
    answer_only_loss: bool = True
    """False: every token after the first is trained (NeMo's ``model.answer_only_loss=False``)."""


class SFTFile:
    """Samples of one JSONL file; ``len()`` is its number of records (non-blank lines)."""

    def __init__(self, path: str | os.PathLike, tokenizer, rules: SampleRules | None = None,
                 index_dir: str | None = None, use_index_cache: bool = True):
        rules = rules or SampleRules()
        check_on_bad_record(rules.on_bad_record)
        self.rules = rules
        self.tokenizer = tokenizer
        self.file = JsonlFile(path, index_dir=index_dir, use_cache=use_index_cache)
        self.path = self.file.path
        self.report = DataReport(self.path)
        """What was skipped, dropped or truncated, by reason."""
        if len(self.file) == 0:
            raise DataError(self.path, None, None, "no records (the file is empty or has only blank lines)")
        self._jinja: JinjaChatTemplate | None = None
        if rules.chat and rules.chat_template != "nemo":
            if rules.chat_template == "tokenizer":
                self._jinja = JinjaChatTemplate.from_tokenizer(tokenizer)
            else:
                self._jinja = JinjaChatTemplate(rules.chat_template, tokenizer.bos_token, tokenizer.eos_token)
        self._template: PromptTemplate | None = None
        if not rules.chat:
            tmpl, key = rules.prompt_template, rules.label_key
            if tmpl is None:
                tmpl, default_key = default_template(self._first_json_object())
                key = key or default_key
            elif key is None:
                names = PLACEHOLDER.findall(tmpl)
                key = names[-1] if names else "output"  # the answer is the field the template ends with
            self._template = PromptTemplate(tmpl, key)

    def _first_json_object(self) -> object:
        for k in range(min(len(self.file), 16)):
            try:
                return self.file.record(k)
            except DataError:
                continue
        return None

    def __len__(self) -> int:
        return len(self.file)

    @property
    def prompt_template(self) -> PromptTemplate | None:
        """The template of prompt/answer records (None for chat records)."""
        return self._template

    def _bad(self, k: int, err: DataError) -> None:
        if self.rules.on_bad_record == "error":
            raise err
        self.report.add("bad_record", str(err), key=err.line)

    def _check(self, k: int) -> DataError | None:
        """Record ``k`` parsed and validated (no tokenizing): its ``DataError``, or None when it is good."""
        try:
            obj = self.file.record(k)
            if self.rules.chat:
                parse_chat_record(obj, self.rules.roles)
            else:
                self._template.parse(obj)
        except DataError as err:
            return err
        except RecordError as e:
            return DataError(self.path, self.file.line_number(k), e.field, e.problem)
        return None

    def validate(self) -> int:
        """Read and validate every record once, before training starts, so that a bad line 4,000,000 stops
        the run at start-up, not an hour in. ``on_bad_record=error``: raise the first bad line's
        ``DataError`` with the number of bad lines; ``skip``: count each bad line once (in the report) and
        return how many there are."""
        errors = (err for err in map(self._check, range(len(self.file))) if err is not None)
        first, bad = None, 0
        for err in errors:
            first, bad = first or err, bad + 1
            if self.rules.on_bad_record == "skip":
                self.report.add("bad_record", str(err), key=err.line)
        if first is not None and self.rules.on_bad_record == "error":
            raise DataError(first.path, first.line, first.field,
                            f"{first.problem} (the first of {bad} bad line{'s' * (bad > 1)} in this file; "
                            "fix them, or set on_bad_record=skip to skip them)")
        return bad

    def record(self, k: int) -> ChatRecord | dict | None:
        """Record ``k`` validated (a ``ChatRecord`` or the template's field values); None when skipped."""
        try:
            obj = self.file.record(k)
        except DataError as err:
            self._bad(k, err)
            return None
        try:
            if self.rules.chat:
                return parse_chat_record(obj, self.rules.roles)
            return self._template.parse(obj)
        except RecordError as e:
            self._bad(k, DataError(self.path, self.file.line_number(k), e.field, e.problem))
            return None

    def sample(self, k: int) -> Sample | None:
        """Sample ``k`` tokenized and fitted to ``max_seq_length``; None when skipped or dropped (counted)."""
        rec = self.record(k)
        if rec is None:
            return None
        where = self.file.where(k)
        r = self.rules
        try:
            if not r.chat:
                rendered = self._template.render(rec)
            elif self._jinja is not None:
                rendered = self._jinja.render(rec)
            else:
                if rec.type is None and any(t.label is not None for t in rec.turns):
                    self.report.add("label_ignored", f"{where}: labels are ignored without a record type "
                                    "(VALUE_TO_TEXT or TEXT_TO_VALUE), as in NeMo", level=logging.INFO)
                rendered = render_chat(rec, r.prompt_tokens)
        except RecordError as e:
            self._bad(k, DataError(self.path, self.file.line_number(k), e.field, e.problem))
            return None
        enc = encode_rendered(rendered, self.tokenizer, add_bos=r.add_bos, add_eos=r.add_eos)
        if not r.answer_only_loss:
            enc.target_mask[:] = True
        if enc.boundary_merges:
            self.report.add("boundary_merge", f"{where}: a token spans a prompt/answer boundary, so a "
                            "generation prompt ending there tokenizes differently from training")
        ids, mask, outcome = truncation.fit_to_length(enc.ids, enc.target_mask, r.max_seq_length,
                                                      r.truncation_method, r.min_target_tokens)
        n = len(enc.ids)
        if ids is None:
            detail = {truncation.NO_TARGET: "no trained token (every token is context)",
                      truncation.OVER_LENGTH: f"{n} tokens > max_seq_length={r.max_seq_length} (dropped)",
                      truncation.NO_TARGET_AFTER_TRUNCATION:
                          f"{n} tokens > max_seq_length={r.max_seq_length} and fewer than min_target_tokens="
                          f"{r.min_target_tokens} trained tokens survive truncation"}[outcome]
            self.report.add(outcome, f"{where}: {detail}")
            return None
        if outcome != truncation.FITS:
            self.report.add(outcome, f"{where}: {n} tokens > max_seq_length={r.max_seq_length}",
                            level=logging.INFO)
        if len(ids) < r.min_seq_length:
            self.report.add("too_short", f"{where}: {len(ids)} tokens < min_seq_length={r.min_seq_length}")
            return None
        return Sample(ids, mask, where)

    def samples(self) -> list[Sample]:
        """Every usable sample of the file, in order (small files and tests; training reads lazily)."""
        out = []
        for k in range(len(self)):
            s = self.sample(k)
            if s is not None:
                out.append(s)
        return out

    def __repr__(self) -> str:
        return f"SFTFile({self.path!r}, records={len(self)}, chat={self.rules.chat})"
