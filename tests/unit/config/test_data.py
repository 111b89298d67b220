"""``model.data.*``: the SteerLM SFT command line loads into the schema, bad values stop with one line naming
the key, and ``build_sft_dataset`` / ``make_microbatches`` turn the config into batches."""

from dataclasses import dataclass, field

import pytest
import torch

from megatron_align.config import ConfigError, ModelConfig, RunConfig, load_config
from megatron_align.config.data import ChatPromptTokens, DataConfig, DatasetConfig, check_data_config
from megatron_align.config.docgen import field_docs
from megatron_align.data import build_sft_dataset, build_sft_datasets, collate_sft, make_microbatches
from tests.unit.data_common import SFT_FIXTURE, sp_tokenizer, write_jsonl


@dataclass
class _SFTModel(ModelConfig):
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class _SFTRun(RunConfig):
    model: _SFTModel = field(default_factory=_SFTModel)


# the data keys of the SteerLM document's attribute-conditioned SFT command, as the shell hands them over
SEED_SFT_DATA_ARGS = [
    "model.data.chat=True",
    "model.data.num_workers=0",
    "model.data.chat_prompt_tokens.system_turn_start='<extra_id_0>'",
    "model.data.chat_prompt_tokens.turn_start='<extra_id_1>'",
    "model.data.chat_prompt_tokens.label_start='<extra_id_2>'",
    "model.data.train_ds.max_seq_length=4096",
    "model.data.train_ds.micro_batch_size=1",
    "model.data.train_ds.global_batch_size=128",
    "model.data.train_ds.file_path=data/oasst/train_labeled_2ep.jsonl",
    "model.data.train_ds.index_mapping_dir=/indexmap_dir",
    "model.data.train_ds.add_eos=False",
    "model.data.train_ds.hf_dataset=True",
    "model.data.validation_ds.max_seq_length=4096",
    "model.data.validation_ds.file_path=data/oasst/val_labeled.jsonl",
    "model.data.validation_ds.micro_batch_size=1",
    "model.data.validation_ds.global_batch_size=128",
    "model.data.validation_ds.index_mapping_dir=/indexmap_dir",
    "model.data.validation_ds.add_eos=False",
    "model.data.validation_ds.hf_dataset=True",
]


def test_seed_sft_command_line_loads():
    cfg = load_config(_SFTRun, None, SEED_SFT_DATA_ARGS, validate=False)
    data = cfg.model.data
    assert data.chat and data.chat_prompt_tokens == ChatPromptTokens()
    assert data.train_ds.file_path == "data/oasst/train_labeled_2ep.jsonl" and not data.train_ds.add_eos
    assert data.validation_ds.max_seq_length == 4096 and data.validation_ds.shuffle is False
    check_data_config(data)


def test_blend_keys_and_one_line_errors():
    args = ["model.data.train_ds.file_path=[a.jsonl,b.jsonl]",
            "model.data.train_ds.concat_sampling_probabilities=[0.25,0.75]"]
    data = load_config(_SFTRun, None, args, validate=False).model.data
    assert data.train_ds.file_path == ["a.jsonl", "b.jsonl"]
    check_data_config(data)
    with pytest.raises(ConfigError, match="train_ds.concat_sampling_probabilitie: no such key"):
        load_config(_SFTRun, None, ["model.data.train_ds.concat_sampling_probabilitie=[1]"], validate=False)


@pytest.mark.parametrize("ds, key, fragment", [
    (DatasetConfig(), "model.data.train_ds.file_path", "is required"),
    (DatasetConfig(file_path=5), "model.data.train_ds.file_path", "must be a path or a list of paths"),
    (DatasetConfig(file_path=["a", "b"]), "model.data.train_ds.concat_sampling_probabilities",
     "e.g. model.data.train_ds.concat_sampling_probabilities=[0.50,0.50]"),
    (DatasetConfig(file_path=["a", "b"], concat_sampling_probabilities=[1.0]),
     "model.data.train_ds.concat_sampling_probabilities", "has 1 values but"),
    (DatasetConfig(file_path=["a", "b"], concat_sampling_probabilities=[0.5, 0.6]),
     "model.data.train_ds.concat_sampling_probabilities", "sums to 1.1, not 1"),
    (DatasetConfig(file_path="a", truncation_method="middle"), "model.data.train_ds.truncation_method",
     "is not one of left|right|drop"),
    (DatasetConfig(file_path="a", on_bad_record="ignore"), "model.data.train_ds.on_bad_record", "error|skip"),
    (DatasetConfig(file_path="a", add_sep=True), "model.data.train_ds.add_sep", "not supported"),
    (DatasetConfig(file_path="a", prompt_template="{output} {input}", label_key="output"),
     "model.data.train_ds.prompt_template", "must end with {output}"),
    (DatasetConfig(file_path="a", prompt_template="{input} {output}", label_key="input"),
     "model.data.train_ds.prompt_template", "must end with {input}"),
    (DatasetConfig(file_path="a", min_seq_length=9, max_seq_length=8), "model.data.train_ds.min_seq_length",
     "is more than"),
])
def test_bad_split_configs(ds, key, fragment):
    with pytest.raises(ConfigError) as info:
        check_data_config(DataConfig(train_ds=ds))
    assert info.value.key == key and fragment in str(info.value) and "\n" not in str(info.value)


def test_every_data_field_has_a_docstring():
    for cls in (DataConfig, DatasetConfig, ChatPromptTokens):
        docs = field_docs(cls)
        assert all(f in docs for f in cls.__dataclass_fields__), cls


def test_build_and_batch_two_blended_files(tmp_path):
    tok = sp_tokenizer()
    kd = write_jsonl(tmp_path / "kd.jsonl",
                     [{"input": f"{i} {i + 1}", "output": f"{i + 1} {i}"} for i in range(9)])
    exo = write_jsonl(tmp_path / "exo.jsonl", [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)])
    data = DataConfig(train_ds=DatasetConfig(file_path=[str(kd), str(exo)],
                                             concat_sampling_probabilities=[0.5, 0.5], micro_batch_size=4,
                                             max_seq_length=32, pad_seq_length_to_mult=8,
                                             index_mapping_dir=str(tmp_path / "idx")))
    ds = build_sft_dataset(data, "train_ds", tok, seed=1, num_samples=64)
    assert len(ds) == 64 and list((tmp_path / "idx").glob("*.idx.npy"))
    samples = [ds[i] for i in range(8)]
    mbs = make_microbatches(samples, data.train_ds, tok.pad_id)
    assert len(mbs) == 2 and mbs[0].tokens.shape[0] == 4 and mbs[0].tokens.shape[1] % 8 == 0
    pp = make_microbatches(samples, data.train_ds, tok.pad_id, pipeline_parallel=True)
    assert all(b.tokens.shape == (4, 32) for b in pp)
    data.train_ds.packed_sequence = True
    packed = make_microbatches(samples, data.train_ds, tok.pad_id)
    assert sum(int((b.cu_seqlens >= 0).sum() - b.cu_seqlens.shape[0]) for b in packed) == 8
    assert sum(b.num_target_tokens for b in packed) == sum(b.num_target_tokens for b in mbs)


def test_build_chat_dataset_from_the_fixture(tmp_path):
    data = DataConfig(chat=True, train_ds=DatasetConfig(file_path=str(SFT_FIXTURE), max_seq_length=512,
                                                        add_eos=False, shuffle=False,
                                                        index_mapping_dir=str(tmp_path)))
    ds = build_sft_dataset(data, "train_ds", sp_tokenizer(), seed=1)
    assert len(ds) == 30 and ds[0].source.endswith("dummy-sft.jsonl:1") and len(ds[0]) <= 512
    assert ds[29].source.endswith("dummy-sft.jsonl:30")


def test_sft_stage_front_door(tmp_path):
    tok = sp_tokenizer()
    path = write_jsonl(tmp_path / "kd.jsonl", [{"input": "1 2", "output": "2 1"},
                                                {"input": "3 4", "output": "4 3"}])
    data = DataConfig(train_ds=DatasetConfig(file_path=str(path), max_seq_length=16))
    train, val = build_sft_datasets(data, tok, seed=3)
    assert val is None and len(train) == 2
    answer_only = collate_sft([train[0], train[1]], pad_id=tok.pad_id, seq_length=16)
    everything, _ = build_sft_datasets(data, tok, answer_only_loss=False, seed=3)
    full = collate_sft([everything[0], everything[1]], pad_id=tok.pad_id, seq_length=16)
    assert torch.equal(full.tokens, answer_only.tokens)
    assert full.num_target_tokens == int(full.lengths.sum()) - 2 > answer_only.num_target_tokens
    data.validation_ds.file_path = str(path)
    assert build_sft_datasets(data, tok)[1] is not None
