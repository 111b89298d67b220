"""The SFT stage's front door to the data package: both splits of ``model.data.*`` and their collation.

``build_sft_datasets(data_cfg, tokenizer, answer_only_loss, seed)`` returns ``(train, validation)`` map-style
datasets (``validation`` is None without ``model.data.validation_ds.file_path``); ``ds[i]`` is the ``Sample``
at stream position ``i`` (deterministic, resumable; dropped records are replaced, see ``blending.py``).
``collate_sft`` is ``collate.collate``: samples -> a right-padded ``Batch`` (usable as the dict that
``training.schedule`` expects).
"""

from __future__ import annotations

from megatron_align.config.data import DataConfig, check_data_config, file_paths
from megatron_align.data.blending import BlendedSFTDataset
from megatron_align.data.builder import build_sft_dataset
from megatron_align.data.collate import collate

collate_sft = collate
"""Samples -> ``Batch`` (``collate(samples, pad_id, seq_length=None, pad_to_multiple_of=1)``)."""


def build_sft_datasets(data: DataConfig, tokenizer, answer_only_loss: bool = True, seed: int = 1234,
                       num_train_samples: int | None = None, prefix: str = "model.data",
                       ) -> tuple[BlendedSFTDataset, BlendedSFTDataset | None]:
    """``(train, validation)`` datasets of ``model.data.*``; raises ``ConfigError`` / ``DataError``.

    ``answer_only_loss=False`` trains every token (``model.answer_only_loss``). ``num_train_samples`` sets
    ``len(train)`` (default: one pass over every training record).
    """
    check_data_config(data, prefix)
    train = build_sft_dataset(data, "train_ds", tokenizer, seed, num_train_samples, prefix, answer_only_loss)
    val = None
    if file_paths(data.validation_ds.file_path):
        val = build_sft_dataset(data, "validation_ds", tokenizer, seed, None, prefix, answer_only_loss)
    return train, val
