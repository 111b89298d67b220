"""models/nemo/config_map and the variant checks: NeMo's keys map to ours, the variants we cannot load are one
line each (MoE, legacy non-mcore GPT, NeMo 2.0 checkpoints, legacy pickled weights, non-GPT targets)."""

import io
import tarfile

import pytest
import yaml

from megatron_align.models.nemo import config_map
from megatron_align.models.nemo.archive import NemoArchive, is_nemo_checkpoint
from megatron_align.models.nemo.errors import NemoFormatError

LLAMA = {
    "mcore_gpt": True,
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "num_attention_heads": 4,
    "num_query_groups": 2,
    "encoder_seq_length": 256,
    "max_position_embeddings": "${.encoder_seq_length}",
    "normalization": "rmsnorm",
    "activation": "fast-swiglu",
    "bias": False,
    "position_embedding_type": "rope",
    "rotary_base": 500000,
    "rotary_percentage": 1.0,
    "share_embeddings_and_output_weights": False,
    "make_vocab_size_divisible_by": 128,
    "tensor_model_parallel_size": 2,
}


def _parse(cfg):
    return config_map.parse_model_yaml(yaml.safe_dump(cfg), "model_config.yaml")


def test_llama_keys_map_and_interpolations_resolve():
    m = config_map.model_config_from_nemo(_parse(LLAMA), "x")
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_query_groups) == (2, 64, 96, 2)
    assert m.max_position_embeddings == 256 and m.rotary_base == 500000 and m.normalization == "rmsnorm"
    assert m.activation == "fast-swiglu" and not m.bias and not m.share_embeddings_and_output_weights
    wrapped = config_map.parse_model_yaml(yaml.safe_dump({"model": LLAMA, "trainer": {"devices": 8}}), "x")
    assert wrapped["num_layers"] == 2  # a full NeMo config's model: section is unwrapped


def test_gpt_style_and_reward_model_keys():
    gpt = {
        **LLAMA,
        "normalization": "layernorm1p",
        "activation": "gelu",
        "openai_gelu": True,
        "bias": True,
        "position_embedding_type": "learned_absolute",
        "share_embeddings_and_output_weights": True,
    }
    m = config_map.model_config_from_nemo(_parse(gpt), "x")
    assert m.normalization == "layernorm" and config_map.zero_centered_gamma(gpt)
    assert m.activation == "gelu-tanh" and m.bias and m.share_embeddings_and_output_weights
    rm = {
        **LLAMA,
        "reward_model_type": "regression",
        "regression": {"num_attributes": 9},
        "share_embeddings_and_output_weights": True,
    }
    r = config_map.model_config_from_nemo(_parse(rm), "x")
    assert config_map.model_kind(rm) == "reward" and r.num_attributes == 9
    assert not r.share_embeddings_and_output_weights  # NeMo-Aligner forces it off for reward models


def test_vocab_is_what_the_saving_tp_padded():
    assert config_map.vocab_fields(LLAMA, 512, 300) == {
        "vocab_size": 300,
        "make_vocab_size_divisible_by": 256,
    }
    assert config_map.vocab_fields(LLAMA, 320, 300) == {"vocab_size": 320, "make_vocab_size_divisible_by": 1}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_moe_experts": 8}, "mixture-of-experts"),
        ({"mcore_gpt": False}, "legacy .*non-megatron-core"),
        (
            {"target": "nemo.collections.nlp.models.language_modeling.megatron_t5_model.MegatronT5Model"},
            "not a GPT",
        ),
        ({"activation": "geglu"}, "activation=geglu: not supported"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type=alibi"),
        ({"normalization": "rmsnorm1p"}, "normalization=rmsnorm1p"),
        ({"num_layers": None}, "key 'num_layers' is missing"),
    ],
)
def test_unsupported_variants_are_one_line(change, message):
    with pytest.raises(NemoFormatError, match=message) as err:
        config_map.model_config_from_nemo(_parse({**LLAMA, **change}), "m.nemo/model_config.yaml")
    assert "\n" not in str(err.value) and "m.nemo/model_config.yaml" in str(err.value)


def _tar(path, files):
    with tarfile.open(path, "w:") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "files, message",
    [
        ({"context/io.json": b"{}", "context/model.yaml": b"{}", "weights/metadata.json": b"{}"}, "NeMo 2.0"),
        (
            {"model_config.yaml": yaml.safe_dump(LLAMA).encode(), "mp_rank_00/model_weights.ckpt": b"pickle"},
            "legacy .pickled",
        ),
        ({"model_weights/metadata.json": b"{}"}, "no model_config.yaml"),
    ],
)
def test_archive_variants_are_refused(tmp_path, files, message):
    from megatron_align.models.nemo.convert import _check_variant

    path = _tar(tmp_path / "m.nemo", files)
    assert is_nemo_checkpoint(path)
    with NemoArchive(path) as nemo, pytest.raises(NemoFormatError, match=message):
        _check_variant(nemo)


def test_yaml_with_python_tags_is_refused():
    with pytest.raises(NemoFormatError, match="not valid YAML"):
        config_map.parse_model_yaml("num_layers: !!python/object/apply:os.system ['true']\n", "m")
