"""Pure parts of HF interop: tensor layouts, the Llama/GPT-2 weight maps, config mapping, CLI user errors.

No megatron model is built here (fast); parity against transformers is in tests/e2e/test_hf_parity.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models import spec_names
from megatron_align.models.hf import config_map, layout, weights_gpt2, weights_llama
from megatron_align.models.hf.convert import read_hf_state_dict, write_hf_state_dict
from megatron_align.models.hf.errors import HFConversionError


# ------------------------------------------------------------------------------------------------------------
# layout transforms
# ------------------------------------------------------------------------------------------------------------
def _labelled_qkv(heads: int, groups: int, hd: int, hidden: int = 3):
    """q rows of head h hold h; k/v rows of group g hold 100+g / 200+g."""
    q = torch.arange(heads).repeat_interleave(hd).float()[:, None].expand(heads * hd, hidden)
    k = (100 + torch.arange(groups)).repeat_interleave(hd).float()[:, None].expand(groups * hd, hidden)
    v = (200 + torch.arange(groups)).repeat_interleave(hd).float()[:, None].expand(groups * hd, hidden)
    return q.contiguous(), k.contiguous(), v.contiguous()


@pytest.mark.parametrize("heads,groups", [(4, 2), (4, 4), (6, 1), (8, 2)])
def test_qkv_interleave_is_megatron_group_layout(heads, groups):
    hd = 5
    q, k, v = _labelled_qkv(heads, groups, hd)
    qkv = layout.interleave_qkv(q, k, v, heads, groups, hd)  # [ng*(np/ng+2)*hn, H]
    per = heads // groups
    blocks = qkv[:, 0].reshape(groups, per + 2, hd)  # megatron's view [ng, np/ng + 2, hn]
    for g in range(groups):
        # q heads g*per .. g*per+per-1 are the ones HF's repeat_kv pairs with kv head g
        assert blocks[g, :per].eq(torch.arange(g * per, (g + 1) * per)[:, None]).all()
        assert blocks[g, per].eq(100 + g).all() and blocks[g, per + 1].eq(200 + g).all()
    q2, k2, v2 = layout.split_qkv(qkv, heads, groups, hd)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_qkv_bias_round_trip_and_shape_errors():
    q, k, v = torch.randn(8 * 4), torch.randn(2 * 4), torch.randn(2 * 4)
    qkv = layout.interleave_qkv(q, k, v, 8, 2, 4)
    assert qkv.shape == (2 * (4 + 2) * 4,)
    assert all(torch.equal(a, b) for a, b in zip(layout.split_qkv(qkv, 8, 2, 4), (q, k, v)))
    with pytest.raises(HFConversionError, match="not divisible"):
        layout.interleave_qkv(q, k, v, 8, 3, 4)
    with pytest.raises(HFConversionError, match="do not match"):
        layout.interleave_qkv(q, k, v, 8, 2, 5)
    with pytest.raises(HFConversionError, match="rows"):
        layout.split_qkv(qkv[:-1], 8, 2, 4)


def test_gate_up_and_vocab_padding():
    gate, up = torch.randn(6, 3), torch.randn(6, 3)
    fc1 = layout.concat_gate_up(gate, up)
    assert torch.equal(fc1[:6], gate) and torch.equal(fc1[6:], up)  # megatron: act(first half) * second half
    g2, u2 = layout.split_gate_up(fc1)
    assert torch.equal(g2, gate) and torch.equal(u2, up)
    w = torch.randn(1000, 4)
    padded = layout.pad_vocab(w, 1024)
    assert padded.shape == (1024, 4) and torch.count_nonzero(padded[1000:]) == 0
    assert torch.equal(layout.unpad_vocab(padded, 1000), w)
    assert layout.pad_vocab(w, 1000) is w
    with pytest.raises(HFConversionError):
        layout.pad_vocab(w, 999)


def test_local_te_names():
    local = [
        "decoder.layers.0.input_layernorm.weight", "decoder.layers.11.input_layernorm.bias",
        "decoder.layers.3.pre_mlp_layernorm.weight", "decoder.layers.3.pre_mlp_layernorm.bias",
    ]
    te = [
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
        "decoder.layers.11.self_attention.linear_qkv.layer_norm_bias",
        "decoder.layers.3.mlp.linear_fc1.layer_norm_weight",
        "decoder.layers.3.mlp.linear_fc1.layer_norm_bias",
    ]
    assert [spec_names.rename_norms(n, "te") for n in local] == te
    assert [spec_names.rename_norms(n, "local") for n in te] == local
    unchanged = ["decoder.final_layernorm.weight", "decoder.layers.0.self_attention.linear_qkv.weight"]
    assert [spec_names.rename_norms(n, "te") for n in unchanged] == unchanged
    state = {n: torch.zeros(1) for n in local + unchanged}
    assert sorted(spec_names.match_names(state, te)) == sorted(te + unchanged)
    assert sorted(spec_names.match_names(state, local)) == sorted(local + unchanged)


# ------------------------------------------------------------------------------------------------------------
# weight maps on synthetic state dicts
# ------------------------------------------------------------------------------------------------------------
def _llama_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4, num_query_groups=2,
                vocab_size=300, share_embeddings_and_output_weights=False)
    base.update(kw)
    return ModelConfig(**base)


def _llama_hf_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, f, hd = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim()
    nq, nkv = cfg.num_attention_heads * hd, cfg.query_groups() * hd
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.share_embeddings_and_output_weights:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (nq, h), f"{p}.self_attn.k_proj.weight": (nkv, h),
            f"{p}.self_attn.v_proj.weight": (nkv, h), f"{p}.self_attn.o_proj.weight": (h, nq),
            f"{p}.mlp.gate_proj.weight": (f, h), f"{p}.mlp.up_proj.weight": (f, h),
            f"{p}.mlp.down_proj.weight": (h, f),
        })
        if cfg.qkv_bias or cfg.bias:
            shapes.update({f"{p}.self_attn.q_proj.bias": (nq,), f"{p}.self_attn.k_proj.bias": (nkv,),
                           f"{p}.self_attn.v_proj.bias": (nkv,)})
        if cfg.bias:
            shapes.update({f"{p}.self_attn.o_proj.bias": (h,), f"{p}.mlp.gate_proj.bias": (f,),
                           f"{p}.mlp.up_proj.bias": (f,), f"{p}.mlp.down_proj.bias": (h,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("kw", [
    {},  # GQA, untied
    {"qkv_bias": True, "share_embeddings_and_output_weights": True},  # qwen2-like
    {"bias": True, "qkv_bias": True, "num_query_groups": None},  # llama with attention_bias + mlp_bias, MHA
    {"kv_channels": 16, "num_query_groups": 1},  # head_dim * heads != hidden, MQA
])
def test_llama_map_round_trip(kw):
    cfg = _llama_cfg(**kw)
    hf = _llama_hf_state(cfg)
    mc = weights_llama.hf_to_megatron(hf, cfg)
    padded = cfg.padded_vocab_size()
    assert mc["embedding.word_embeddings.weight"].shape == (padded, cfg.hidden_size)
    assert ("output_layer.weight" in mc) != cfg.share_embeddings_and_output_weights
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.query_groups()) * cfg.head_dim()
    assert mc["decoder.layers.1.self_attention.linear_qkv.weight"].shape == (qkv_rows, cfg.hidden_size)
    assert mc["decoder.layers.1.mlp.linear_fc1.weight"].shape == (2 * cfg.ffn_hidden_size, cfg.hidden_size)
    back = weights_llama.megatron_to_hf(mc, cfg)
    assert sorted(back) == sorted(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_llama_map_accepts_extras_and_rejects_unknown():
    cfg = _llama_cfg(share_embeddings_and_output_weights=True)
    hf = _llama_hf_state(cfg)
    extra = dict(hf, **{"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4),
                        "lm_head.weight": hf["model.embed_tokens.weight"]})
    assert sorted(weights_llama.hf_to_megatron(extra, cfg)) == sorted(weights_llama.hf_to_megatron(hf, cfg))
    bare = {k.removeprefix("model."): v for k, v in hf.items()}
    assert sorted(weights_llama.hf_to_megatron(bare, cfg)) == sorted(weights_llama.hf_to_megatron(hf, cfg))
    with pytest.raises(HFConversionError, match="unexpected tensors.*layers.5"):
        weights_llama.hf_to_megatron(dict(hf, **{"model.layers.5.mlp.up_proj.weight": torch.ones(1)}), cfg)
    missing = dict(hf)
    del missing["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(HFConversionError, match="down_proj.weight' is missing"):
        weights_llama.hf_to_megatron(missing, cfg)
    untied = _llama_cfg()
    with pytest.raises(HFConversionError, match="lm_head.weight is missing"):
        weights_llama.hf_to_megatron(hf, untied)


def _gpt2_cfg(tied: bool = True) -> ModelConfig:
    return ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=128, num_attention_heads=4,
                       vocab_size=300, normalization="layernorm", activation="gelu-tanh",
                       position_embedding_type="learned_absolute",
                       bias=True, share_embeddings_and_output_weights=tied, max_position_embeddings=40)


def _gpt2_hf_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    shapes = {"transformer.wte.weight": (cfg.vocab_size, h), "transformer.wpe.weight": (40, h),
              "transformer.ln_f.weight": (h,), "transformer.ln_f.bias": (h,)}
    if not cfg.share_embeddings_and_output_weights:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"transformer.h.{i}"
        shapes.update({
            f"{p}.ln_1.weight": (h,), f"{p}.ln_1.bias": (h,),
            f"{p}.ln_2.weight": (h,), f"{p}.ln_2.bias": (h,),
            f"{p}.attn.c_attn.weight": (h, 3 * h), f"{p}.attn.c_attn.bias": (3 * h,),
            f"{p}.attn.c_proj.weight": (h, h), f"{p}.attn.c_proj.bias": (h,),
            f"{p}.mlp.c_fc.weight": (h, f), f"{p}.mlp.c_fc.bias": (f,),
            f"{p}.mlp.c_proj.weight": (f, h), f"{p}.mlp.c_proj.bias": (h,),
        })
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_map_round_trip(tied):
    cfg = _gpt2_cfg(tied)
    hf = _gpt2_hf_state(cfg)
    mc = weights_gpt2.hf_to_megatron(hf, cfg)
    # Conv1D [in, out] -> Linear [out, in]
    fc1, c_fc = mc["decoder.layers.0.mlp.linear_fc1.weight"], hf["transformer.h.0.mlp.c_fc.weight"]
    fc2, c_proj = mc["decoder.layers.1.mlp.linear_fc2.weight"], hf["transformer.h.1.mlp.c_proj.weight"]
    assert torch.equal(fc1, c_fc.t()) and torch.equal(fc2, c_proj.t())
    # c_attn [Q|K|V] columns -> per-head interleave: head 0's q rows, then its k rows, then its v rows
    hd, h = cfg.head_dim(), cfg.hidden_size
    qkv = mc["decoder.layers.0.self_attention.linear_qkv.weight"]
    c_attn = hf["transformer.h.0.attn.c_attn.weight"]
    assert torch.equal(qkv[:hd], c_attn[:, :hd].t())
    assert torch.equal(qkv[hd:2 * hd], c_attn[:, h:h + hd].t())
    assert torch.equal(qkv[2 * hd:3 * hd], c_attn[:, 2 * h:2 * h + hd].t())
    assert mc["embedding.word_embeddings.weight"].shape[0] == cfg.padded_vocab_size()
    assert ("output_layer.weight" in mc) != tied
    back = weights_gpt2.megatron_to_hf(mc, cfg)
    assert sorted(back) == sorted(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_gpt2_map_accepts_bare_prefix_and_mask_buffers():
    cfg = _gpt2_cfg()
    hf = _gpt2_hf_state(cfg)
    old = {k.removeprefix("transformer."): v for k, v in hf.items()}
    old["h.0.attn.bias"] = torch.ones(1, 1, 40, 40)
    old["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    mc, ref = weights_gpt2.hf_to_megatron(old, cfg), weights_gpt2.hf_to_megatron(hf, cfg)
    assert sorted(mc) == sorted(ref) and all(torch.equal(mc[k], ref[k]) for k in ref)


# ------------------------------------------------------------------------------------------------------------
# config mapping
# ------------------------------------------------------------------------------------------------------------
LLAMA_V5 = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "vocab_size": 1000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False,
}
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 1000}


def test_llama_config_both_generations():
    cfg = config_map.model_config_from_hf(LLAMA_V5)
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads) == (2, 64, 96, 4)
    assert (cfg.num_query_groups, cfg.kv_channels) == (2, None)
    assert (cfg.rotary_base, cfg.layernorm_epsilon) == (5e5, 1e-5)
    assert (cfg.normalization, cfg.activation) == ("rmsnorm", "fast-swiglu")
    assert cfg.position_embedding_type == "rope"
    assert not cfg.bias and not cfg.qkv_bias and not cfg.share_embeddings_and_output_weights
    v4 = {k: v for k, v in LLAMA_V5.items() if k not in ("rope_parameters", "head_dim")}
    v4.update(rope_theta=500000.0, rope_scaling=None)
    assert config_map.model_config_from_hf(v4) == cfg


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_config_round_trip(model_type):
    if model_type == "gpt2":
        hf = dict(GPT2, activation_function="gelu_new", layer_norm_epsilon=1e-5)
    elif model_type == "qwen2":
        hf = dict(LLAMA_V5, model_type="qwen2", tie_word_embeddings=True, use_sliding_window=False,
                  sliding_window=4096, max_position_embeddings=32768)
        hf.pop("attention_bias")
    else:
        hf = LLAMA_V5
    cfg = config_map.model_config_from_hf(hf)
    out = config_map.hf_config_from_model(cfg, token_ids={"eos_token_id": 2, "bos_token_id": None})
    assert out["model_type"] == model_type and out["eos_token_id"] == 2 and "bos_token_id" not in out
    assert config_map.model_config_from_hf(out) == cfg
    if model_type == "qwen2":
        assert cfg.qkv_bias and not cfg.bias and cfg.share_embeddings_and_output_weights
        assert cfg.max_position_embeddings == 32768  # window not in use
    if model_type == "gpt2":
        assert cfg.share_embeddings_and_output_weights and cfg.bias and cfg.ffn_hidden_size == 256
        assert (cfg.activation, cfg.position_embedding_type, cfg.max_position_embeddings) == (
            "gelu-tanh", "learned_absolute", 64)


def test_sliding_window_caps_positions(caplog):
    hf = dict(LLAMA_V5, model_type="mistral", sliding_window=512, max_position_embeddings=32768)
    cfg = config_map.model_config_from_hf(hf)
    assert cfg.max_position_embeddings == 512 and cfg.encoder_seq_length <= 512
    assert "sliding_window=512" in caplog.text
    assert config_map.model_config_from_hf(dict(hf, sliding_window=None)).max_position_embeddings == 32768
    qwen = dict(LLAMA_V5, model_type="qwen2", sliding_window=512, max_position_embeddings=4096)
    assert config_map.model_config_from_hf(dict(qwen, use_sliding_window=True)).max_position_embeddings == 512
    layered = dict(qwen, layer_types=["full_attention", "sliding_attention"])
    assert config_map.model_config_from_hf(layered).max_position_embeddings == 512


@pytest.mark.parametrize("change,match", [
    ({"model_type": "bert"}, "model_type 'bert' is not supported"),
    ({"model_type": None}, "'model_type' is missing"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "'llama3' is not implemented"),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear"}}, "'linear' is not implemented"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_hidden_layers": None}, "'num_hidden_layers' is missing"),
])
def test_config_refusals_are_one_line(change, match):
    hf = dict(LLAMA_V5, **change)
    with pytest.raises(HFConversionError, match=match) as exc:
        config_map.model_config_from_hf(hf, source="/m/config.json")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("change,match", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"activation_function": "quick_gelu"}, "quick_gelu"),
])
def test_gpt2_refusals(change, match):
    hf = GPT2
    with pytest.raises(HFConversionError, match=match):
        config_map.model_config_from_hf(dict(hf, **change))


def test_export_refuses_mismatched_model_type():
    cfg = config_map.model_config_from_hf(LLAMA_V5)
    with pytest.raises(HFConversionError, match="cannot export as 'gpt2'"):
        config_map.hf_config_from_model(cfg, "gpt2")
    with pytest.raises(HFConversionError, match="qwen2 export needs qkv_bias"):
        config_map.hf_config_from_model(cfg, "qwen2")
    assert config_map.hf_config_from_model(cfg, "mistral")["model_type"] == "mistral"


# ------------------------------------------------------------------------------------------------------------
# safetensors I/O and CLI user errors
# ------------------------------------------------------------------------------------------------------------
def test_sharded_write_and_read(tmp_path):
    state = {f"t{i}": torch.randn(64, 64) for i in range(5)}  # 16 KiB each
    names = write_hf_state_dict(state, tmp_path, max_shard_bytes=40_000)
    assert len(names) == 3 and (tmp_path / "model.safetensors.index.json").is_file()
    back = read_hf_state_dict(tmp_path)
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    single = tmp_path / "single"
    single.mkdir()
    q, k = torch.randn(8, 4).chunk(2)  # views of one storage, as the maps produce
    assert write_hf_state_dict({"q": q, "k": k}, single) == ["model.safetensors"]
    assert torch.equal(read_hf_state_dict(single)["k"], k)


def _run_cli(argv, capsys):
    from megatron_align.cli.convert import convert_main

    with pytest.raises(SystemExit) as exc:
        convert_main(argv)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_cli_missing_config_json(tmp_path, capsys):
    code, err = _run_cli(["--from-hf", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("convert error:") and "config.json: not found" in err
    assert len(err.splitlines()) == 1


def test_cli_unsupported_model_type_and_pickles(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    code, err = _run_cli(["--from-hf", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "model_type 't5' is not supported" in err and len(err.splitlines()) == 1
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_V5))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    code, err = _run_cli(["--from-hf", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "safetensors" in err and len(err.splitlines()) == 1


def test_cli_bad_checkpoint_and_arguments(tmp_path, capsys):
    code, err = _run_cli(["--to-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")], capsys)
    assert code == 2 and err.startswith("convert error:") and len(err.splitlines()) == 1
    code, _ = _run_cli(["--from-hf", "a", "--to-hf", "b", "--out", "c"], capsys)  # argparse: exclusive
    assert code == 2
