"""Readers, validation, chat templates and collation for every JSONL format the stages read.

Flow: ``JsonlFile`` (lazy, line-offset index) -> record validation (``nemo_chat.parse_chat_record``,
``PromptTemplate.parse``; ``DataError`` = ``file:line: field: what is wrong``) -> template (NeMo extra_id
chat, a Jinja chat template, or a prompt template) -> ``encode_rendered`` (whole-string tokenization,
answer-only target mask from character offsets) -> ``fit_to_length`` (truncate / drop, never an all-masked
sample) ->
``BlendedSFTDataset`` (files blended by ``concat_sampling_probabilities``, deterministic and resumable) ->
``collate`` / ``pack_samples`` + ``collate_packed`` -> ``Batch``. ``build_sft_dataset`` does it from
``model.data.*`` (``megatron_align.config.data.DataConfig``).
"""

from megatron_align.config.data import ChatPromptTokens, DataConfig, DatasetConfig
from megatron_align.data.blending import BlendedIndex, BlendedSFTDataset
from megatron_align.data.builder import build_sft_dataset, make_microbatches, sample_rules
from megatron_align.data.collate import Batch, collate, collate_packed
from megatron_align.data.errors import DataError, DataReport, RecordError
from megatron_align.data.hf_chat import JinjaChatTemplate
from megatron_align.data.jsonl import JsonlFile, build_line_index, load_line_index
from megatron_align.data.nemo_chat import (
    ChatRecord,
    Turn,
    chat_prompt,
    encode_chat,
    parse_chat_record,
    render_chat,
)
from megatron_align.data.packing import PackedRow, pack_samples
from megatron_align.data.prompt_template import INPUT_OUTPUT, PROMPT_CHOSEN, PromptTemplate
from megatron_align.data.sft import build_sft_datasets, collate_sft
from megatron_align.data.sft_dataset import Sample, SampleRules, SFTFile
from megatron_align.data.tokenize import Encoded, Rendered, encode_rendered
from megatron_align.data.truncation import fit_to_length

__all__ = [
    "INPUT_OUTPUT",
    "PROMPT_CHOSEN",
    "Batch",
    "BlendedIndex",
    "BlendedSFTDataset",
    "ChatPromptTokens",
    "ChatRecord",
    "DataConfig",
    "DataError",
    "DataReport",
    "DatasetConfig",
    "Encoded",
    "JinjaChatTemplate",
    "JsonlFile",
    "PackedRow",
    "PromptTemplate",
    "RecordError",
    "Rendered",
    "SFTFile",
    "Sample",
    "SampleRules",
    "Turn",
    "build_line_index",
    "build_sft_dataset",
    "build_sft_datasets",
    "chat_prompt",
    "collate",
    "collate_packed",
    "collate_sft",
    "encode_chat",
    "encode_rendered",
    "fit_to_length",
    "load_line_index",
    "make_microbatches",
    "pack_samples",
    "parse_chat_record",
    "render_chat",
    "sample_rules",
]
