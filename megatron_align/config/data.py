"""The data section of SFT-style stages: ``model.data.*`` (chat template, files, batch sizes, sample rules).

Key names follow NeMo / NeMo-Aligner's ``gpt_sft.yaml`` and the SteerLM command line
(``model.data.chat=True``, ``model.data.chat_prompt_tokens.turn_start='<extra_id_1>'``,
``model.data.train_ds.{file_path, max_seq_length, micro_batch_size, global_batch_size, index_mapping_dir,
add_eos, hf_dataset}``, ...). A stage puts ``DataConfig`` in its model section
(``data: DataConfig = field(default_factory=DataConfig)``) and calls ``check_data_config`` from its
``validate`` hook. What the rules mean in detail is documented in ``megatron_align.data`` (truncation in
``data/truncation.py``, templates in ``data/nemo_chat.py`` and ``data/prompt_template.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_align.config.errors import ConfigError

TRUNCATION_METHODS = ("left", "right", "drop")
"""Values of ``truncation_method`` (see ``megatron_align/data/truncation.py``)."""
ON_BAD_RECORD = ("error", "skip")
"""Values of ``on_bad_record``."""
CHAT_TEMPLATE_SOURCES = ("nemo", "tokenizer")
"""Named values of ``model.data.chat_template`` (anything else must be a Jinja template)."""


@dataclass
class ChatPromptTokens:
    """``model.data.chat_prompt_tokens.*``: the markers of NeMo's chat template (SteerLM's extra_id tokens).

    NeMo's own defaults are control characters (``\\x00``, ``\\x11``, ``\\x12``); every SteerLM command line
    sets the ``<extra_id_*>`` markers, so they are the defaults here.
    """

    system_turn_start: str = "<extra_id_0>"
    """Opens the system turn: ``<extra_id_0>System\\n{system}\\n``."""
    turn_start: str = "<extra_id_1>"
    """Opens each turn (``<extra_id_1>User\\n``); the one right after an answer is trained (it ends the
    answer)."""
    label_start: str = "<extra_id_2>"
    """Opens a turn's attribute label line: ``<extra_id_2>quality:4,toxicity:0,...\\n``."""
    end_of_turn: str = "\n"
    """Ends the text of each turn (trained after an answer)."""
    end_of_name: str = "\n"
    """Ends the role name (``User``, ``Assistant``, ``System``) and the label line."""


@dataclass
class DatasetConfig:
    """``model.data.train_ds.*`` / ``model.data.validation_ds.*``: a split's files, batches, sample rules."""

    file_path: Any = None
    """A JSONL file, or a list of them blended by ``concat_sampling_probabilities``."""
    global_batch_size: int = 128
    """Samples per optimizer step over all data-parallel ranks."""
    micro_batch_size: int = 1
    """Samples per forward pass on one data-parallel rank."""
    shuffle: bool = True
    """Visit each file in a seeded random order (a fresh permutation per pass over the file)."""
    max_seq_length: int = 2048
    """Longest sample in tokens (bos/eos included); longer ones follow ``truncation_method``."""
    min_seq_length: int = 1
    """Samples with fewer tokens are dropped (and counted)."""
    drop_last: bool = True
    """Drop a final partial global batch (validation usually keeps it)."""
    concat_sampling_probabilities: Optional[list[float]] = None
    """With several files: the fraction of samples drawn from each (one per file, summing to 1)."""
    prompt_template: Optional[str] = None
    """Non-chat data: how a record becomes text, e.g. ``"{input} {output}"`` or
    ``"Q: {input}\\nA: {output}"``; it must end with ``{label_key}``. None: ``"{input} {output}"`` for
    input/output records (NeMo's default), ``"{prompt}{chosen}"`` for EXO's prompt/chosen records."""
    label_key: Optional[str] = None
    """Non-chat data: the record field that is the answer (trained); None: ``output`` or ``chosen`` by
    format."""
    add_eos: bool = True
    """Append the eos token after the text (trained when the text ends with an answer)."""
    add_bos: bool = False
    """Prepend the bos token (never trained)."""
    add_sep: bool = False
    """NeMo's separator between prompt and answer: not supported, must stay False."""
    truncation_method: str = "right"
    """Over-length samples: ``right`` keeps the first ``max_seq_length`` tokens (NeMo's chat behaviour),
    ``left`` keeps the last ones (the oldest context goes; an answer cut at its start is not trained),
    ``drop`` drops the sample. Every case is counted and reported."""
    min_target_tokens: int = 1
    """A truncated sample must keep at least this many trained tokens, else it is dropped (and counted)."""
    on_bad_record: str = "error"
    """A malformed line: ``error`` stops with ``file:line: field: what is wrong``; ``skip`` skips it, counts
    it and logs the first few."""
    index_mapping_dir: Optional[str] = None
    """Where the line-offset index of each JSONL file is cached; None: next to the file (in memory only
    when that directory is read-only)."""
    hf_dataset: bool = False
    """Accepted for NeMo command lines; JSONL is always read lazily through a line-offset index."""
    pad_to_max_length: bool = False
    """Pad every micro-batch to ``max_seq_length`` (forced on with pipeline parallelism)."""
    pad_seq_length_to_mult: int = 16
    """Otherwise pad a micro-batch's length up to a multiple of this."""
    packed_sequence: bool = False
    """Pack several samples into each ``max_seq_length`` row (position ids restart per sample, attention and
    loss never cross samples)."""


@dataclass
class DataConfig:
    """``model.data.*`` for SFT-style stages: record format, chat template and the train/validation splits."""

    chat: bool = False
    """True: NeMo chat records (``{system, mask, type, conversations: [{from, value, label}]}``); False:
    prompt/answer records (``{input, output}`` or ``{prompt, chosen}``) rendered with ``prompt_template``."""
    chat_prompt_tokens: ChatPromptTokens = field(default_factory=ChatPromptTokens)
    """Markers of the NeMo chat template."""
    chat_template: str = "nemo"
    """``nemo``: NeMo's extra_id template built from ``chat_prompt_tokens``; ``tokenizer``: the tokenizer's
    own Jinja chat template (``tokenizer_config.json``); anything else: a Jinja chat template."""
    num_workers: int = 0
    """Data-loader worker processes (0: load in the training process)."""
    train_ds: DatasetConfig = field(default_factory=DatasetConfig)
    """Training split."""
    validation_ds: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(shuffle=False, drop_last=False))
    """Validation split."""


SFTDataConfig = DataConfig
"""The name the SFT stage uses for ``model.data.*``."""

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def file_paths(value: Any) -> list[str]:
    """``file_path`` (None, one path, or a list of paths) as a list of paths."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"file_path={value!r} must be a path or a list of paths")


def check_dataset_config(ds: DatasetConfig, prefix: str, chat: bool, required: bool = True) -> None:
    """Raise ``ConfigError`` (one line naming the key and the fix) for an impossible split config."""
    try:
        paths = file_paths(ds.file_path)
    except ValueError:
        raise ConfigError(f"{prefix}.file_path={ds.file_path!r} must be a path or a list of paths",
                          key=f"{prefix}.file_path") from None
    if not paths:
        if required:
            raise ConfigError(f"{prefix}.file_path is required: set it to a JSONL file (or a list of them)",
                              key=f"{prefix}.file_path")
        return
    probs = ds.concat_sampling_probabilities
    key = f"{prefix}.concat_sampling_probabilities"
    if probs is None:
        if len(paths) > 1:
            even = ",".join([f"{1 / len(paths):.2f}"] * len(paths))
            raise ConfigError(f"{key} is required with {len(paths)} files in {prefix}.file_path: give one "
                              f"probability per file, e.g. {key}=[{even}]", key=key)
    else:
        if len(probs) != len(paths):
            raise ConfigError(f"{key} has {len(probs)} values but {prefix}.file_path has {len(paths)} files: "
                              "give one probability per file", key=key)
        if any(not math.isfinite(p) or p < 0 for p in probs) or sum(probs) <= 0:
            raise ConfigError(f"{key}={list(probs)} must be non-negative numbers with a positive sum",
                              key=key)
        if abs(sum(probs) - 1.0) > 1e-3:
            raise ConfigError(f"{key}={list(probs)} sums to {sum(probs):.4g}, not 1: rescale them", key=key)
    for name in ("global_batch_size", "micro_batch_size", "max_seq_length", "min_seq_length",
                 "pad_seq_length_to_mult"):
        if getattr(ds, name) < 1:
            raise ConfigError(f"{prefix}.{name}={getattr(ds, name)} must be at least 1",
                              key=f"{prefix}.{name}")
    if ds.min_target_tokens < 1:
        raise ConfigError(f"{prefix}.min_target_tokens={ds.min_target_tokens} must be at least 1 (a sample "
                          "without trained tokens gives a NaN or constant loss)",
                          key=f"{prefix}.min_target_tokens")
    if ds.min_seq_length > ds.max_seq_length:
        raise ConfigError(f"{prefix}.min_seq_length={ds.min_seq_length} is more than {prefix}.max_seq_length="
                          f"{ds.max_seq_length}", key=f"{prefix}.min_seq_length")
    if ds.truncation_method not in TRUNCATION_METHODS:
        raise ConfigError(f"{prefix}.truncation_method={ds.truncation_method!r} is not one of "
                          f"{'|'.join(TRUNCATION_METHODS)}", key=f"{prefix}.truncation_method")
    if ds.on_bad_record not in ON_BAD_RECORD:
        raise ConfigError(f"{prefix}.on_bad_record={ds.on_bad_record!r} is not one of "
                          f"{'|'.join(ON_BAD_RECORD)}", key=f"{prefix}.on_bad_record")
    if ds.add_sep:
        raise ConfigError(f"{prefix}.add_sep=True is not supported: put any separator text in "
                          f"{prefix}.prompt_template instead", key=f"{prefix}.add_sep")
    if not chat and ds.prompt_template is not None:
        names = _PLACEHOLDER.findall(ds.prompt_template)
        label = ds.label_key or (names[-1] if names else "output")
        if not ds.prompt_template.endswith("{" + label + "}") or names.count(label) != 1:
            raise ConfigError(f"{prefix}.prompt_template={ds.prompt_template!r} must end with {{{label}}} "
                              f"(the answer, {prefix}.label_key) and contain it once",
                              key=f"{prefix}.prompt_template")


def check_data_config(data: DataConfig, prefix: str = "model.data", validation_required: bool = False,
                      ) -> None:
    """Check ``model.data.*``: both splits and the chat template choice; raises ``ConfigError``."""
    check_dataset_config(data.train_ds, f"{prefix}.train_ds", data.chat)
    check_dataset_config(data.validation_ds, f"{prefix}.validation_ds", data.chat,
                         required=validation_required)
    tmpl = data.chat_template
    if data.chat and tmpl not in CHAT_TEMPLATE_SOURCES and not ("{{" in tmpl or "{%" in tmpl):
        raise ConfigError(f"{prefix}.chat_template={tmpl!r} is not one of {'|'.join(CHAT_TEMPLATE_SOURCES)} "
                          "nor a Jinja template", key=f"{prefix}.chat_template")
    if data.num_workers < 0:
        raise ConfigError(f"{prefix}.num_workers={data.num_workers} must be at least 0",
                          key=f"{prefix}.num_workers")
