"""From the ``model.data.*`` config to datasets and micro-batches: the one place stages build SFT data.

``build_sft_dataset(data_cfg, "train_ds", tokenizer, seed)`` checks the config (``ConfigError`` naming the
key), opens every file of ``file_path`` lazily and blends them by ``concat_sampling_probabilities``.
``make_microbatches(samples, ds_cfg, pad_id, ...)`` collates (or packs, with ``packed_sequence``) one rank's
samples into ``Batch``es; with pipeline parallelism rows are padded to ``max_seq_length``.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_align.config.data import DataConfig, DatasetConfig, check_dataset_config, file_paths
from megatron_align.config.errors import ConfigError
from megatron_align.data.blending import BlendedSFTDataset
from megatron_align.data.collate import Batch, collate, collate_packed
from megatron_align.data.packing import pack_samples
from megatron_align.data.sft_dataset import SampleRules, SFTFile


def sample_rules(data: DataConfig, ds: DatasetConfig, answer_only_loss: bool = True) -> SampleRules:
    """The ``SampleRules`` of one split (``answer_only_loss``: ``model.answer_only_loss``)."""
    return SampleRules(
        chat=data.chat, chat_template=data.chat_template, prompt_tokens=data.chat_prompt_tokens,
        prompt_template=ds.prompt_template, label_key=ds.label_key, max_seq_length=ds.max_seq_length,
        min_seq_length=ds.min_seq_length, truncation_method=ds.truncation_method,
        min_target_tokens=ds.min_target_tokens, add_bos=ds.add_bos, add_eos=ds.add_eos,
        on_bad_record=ds.on_bad_record, answer_only_loss=answer_only_loss)


def build_sft_dataset(data: DataConfig, split: str, tokenizer, seed: int, num_samples: int | None = None,
                      prefix: str = "model.data", answer_only_loss: bool = True) -> BlendedSFTDataset:
    """The blended, lazily read dataset of ``model.data.<split>`` (``train_ds`` / ``validation_ds``).

    ``num_samples`` sets ``len()`` (e.g. ``max_steps * global_batch_size``); positions past it still work.
    Raises ``ConfigError`` for a bad config, ``DataError`` for a missing or empty file.
    """
    ds: DatasetConfig = getattr(data, split)
    key = f"{prefix}.{split}"
    check_dataset_config(ds, key, data.chat)
    rules = sample_rules(data, ds, answer_only_loss)
    try:
        files = [SFTFile(p, tokenizer, rules, index_dir=ds.index_mapping_dir)
                 for p in file_paths(ds.file_path)]
    except ValueError as e:  # template problems (DataError is a ValueError too, but is raised as is)
        if type(e) is not ValueError:
            raise
        raise ConfigError(f"{key}: {e}", key=f"{key}.prompt_template") from None
    for f in files:  # every line checked before step 1 (one pass; bad lines raise or are counted once)
        f.validate()
    return BlendedSFTDataset(files, ds.concat_sampling_probabilities, seed=seed, shuffle=ds.shuffle,
                             num_samples=num_samples)


def make_microbatches(samples: Sequence, ds: DatasetConfig, pad_id: int, pipeline_parallel: bool = False,
                      ) -> list[Batch]:
    """One rank's samples as micro-batches of ``ds.micro_batch_size`` rows.

    With ``ds.packed_sequence`` the samples are first packed into ``max_seq_length`` rows (so the number of
    micro-batches depends on the lengths). Rows are padded to ``max_seq_length`` when ``pad_to_max_length``
    or ``pipeline_parallel``, else to a multiple of ``pad_seq_length_to_mult``.
    """
    fixed = ds.max_seq_length if (ds.pad_to_max_length or pipeline_parallel) else None
    mbs = ds.micro_batch_size
    if ds.packed_sequence:
        rows = pack_samples(samples, ds.max_seq_length)
        return [collate_packed(rows[i:i + mbs], pad_id, fixed, ds.pad_seq_length_to_mult)
                for i in range(0, len(rows), mbs)]
    return [collate(samples[i:i + mbs], pad_id, fixed, ds.pad_seq_length_to_mult)
            for i in range(0, len(samples), mbs)]
