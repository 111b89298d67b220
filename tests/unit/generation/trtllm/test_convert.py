"""TensorRT-LLM refit conversion: megatron TP/PP shards -> full HF tensors -> TP=k engine shards, buckets.

The reference is independent of the code under test: random *full* HF tensors are sliced here into the
per-rank shards megatron holds (``linear_qkv`` rank r = its query groups, each ``[q heads; k; v]``;
``linear_fc1`` rank r = ``[gate_r; up_r]``; row-parallel ``linear_proj`` / ``linear_fc2`` by columns;
vocab-parallel embeddings padded with junk rows; pipeline stages numbering layers locally). Converting back
must give the HF tensors bit for bit, for source TP/PP 1x1, 2x1, 1x2, 2x2, local and TE names, tied and
untied, with QKV biases. Target-TP shards are checked against explicit head / row index arithmetic and
functionally: summing the per-rank partial outputs of attention (GQA, including fewer kv heads than ranks),
the MLP, the vocab-parallel embedding and lm_head gives the full layer's output.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_align.generation.trtllm import convert, reshard
from megatron_align.models.hf.errors import HFConversionError
from tests.helpers import tiny_llama


# ------------------------------------------------------------------------------------------------------------
# reference: random HF tensors and megatron's per-rank layout of them, built by explicit slicing
# ------------------------------------------------------------------------------------------------------------
def random_hf(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    h, f, hd = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim()
    nq, nkv, v = cfg.num_attention_heads, cfg.query_groups(), cfg.vocab_size
    hf = {"model.embed_tokens.weight": r(v, h), "model.norm.weight": r(h)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        hf.update({
            p + "input_layernorm.weight": r(h), p + "post_attention_layernorm.weight": r(h),
            p + "self_attn.q_proj.weight": r(nq * hd, h), p + "self_attn.k_proj.weight": r(nkv * hd, h),
            p + "self_attn.v_proj.weight": r(nkv * hd, h), p + "self_attn.o_proj.weight": r(h, nq * hd),
            p + "mlp.gate_proj.weight": r(f, h), p + "mlp.up_proj.weight": r(f, h),
            p + "mlp.down_proj.weight": r(h, f),
        })
        if cfg.qkv_bias:
            hf.update({p + "self_attn.q_proj.bias": r(nq * hd), p + "self_attn.k_proj.bias": r(nkv * hd),
                       p + "self_attn.v_proj.bias": r(nkv * hd)})
    if not cfg.share_embeddings_and_output_weights:
        hf["lm_head.weight"] = r(v, h)
    return hf


def _padded_vocab(t, cfg, seed):
    """Megatron's padded table: the real rows then junk (a trained model's padding rows are not zero)."""
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(cfg.padded_vocab_size() - t.shape[0], t.shape[1], generator=g)
    return torch.cat([t, junk])


def megatron_shards(hf, cfg, tp, pp, te_names=False):
    """{(pp_rank, tp_rank): state dict} as megatron's GPTModel stages hold them (local or TE names)."""
    hd, nq, nkv = cfg.head_dim(), cfg.num_attention_heads, cfg.query_groups()
    per, g_tp, f_tp = nq // nkv, nkv // tp, cfg.ffn_hidden_size // tp
    layers = cfg.num_layers // pp
    emb = _padded_vocab(hf["model.embed_tokens.weight"], cfg, 1)
    vp = emb.shape[0] // tp
    shards = {}
    for s in range(pp):
        for r in range(tp):
            sd = {}
            if s == 0:
                sd["embedding.word_embeddings.weight"] = emb[r * vp:(r + 1) * vp].clone()
            for j in range(layers):
                m, p = f"decoder.layers.{j}.", f"model.layers.{s * layers + j}."  # local j, global i
                for kind in ["weight"] + (["bias"] if cfg.qkv_bias else []):
                    q, k, v = (hf[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv")
                    rows = []
                    for grp in range(r * g_tp, (r + 1) * g_tp):  # this rank's query groups, interleaved
                        rows += [q[grp * per * hd:(grp + 1) * per * hd], k[grp * hd:(grp + 1) * hd],
                                 v[grp * hd:(grp + 1) * hd]]
                    sd[m + f"self_attention.linear_qkv.{kind}"] = torch.cat(rows).clone()
                heads = slice(r * (nq // tp) * hd, (r + 1) * (nq // tp) * hd)
                sd[m + "self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"][:, heads]
                rows = slice(r * f_tp, (r + 1) * f_tp)
                sd[m + "mlp.linear_fc1.weight"] = torch.cat(
                    [hf[p + "mlp.gate_proj.weight"][rows], hf[p + "mlp.up_proj.weight"][rows]])
                sd[m + "mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"][:, rows].clone()
                in_norm = hf[p + "input_layernorm.weight"]
                mlp_norm = hf[p + "post_attention_layernorm.weight"]
                if te_names:
                    sd[m + "self_attention.linear_qkv.layer_norm_weight"] = in_norm.clone()
                    sd[m + "mlp.linear_fc1.layer_norm_weight"] = mlp_norm.clone()
                else:
                    sd[m + "input_layernorm.weight"] = in_norm.clone()
                    sd[m + "pre_mlp_layernorm.weight"] = mlp_norm.clone()
                sd[m + "mlp.linear_fc1._extra_state"] = None  # TE / megatron extra state: must be ignored
            if s == pp - 1:
                sd["decoder.final_layernorm.weight"] = hf["model.norm.weight"].clone()
                if not cfg.share_embeddings_and_output_weights:
                    head = _padded_vocab(hf["lm_head.weight"], cfg, 2)
                    sd["output_layer.weight"] = head[r * vp:(r + 1) * vp].clone()
                elif pp > 1:  # the last stage keeps its own copy of the tied embedding
                    sd["output_layer.weight"] = emb[r * vp:(r + 1) * vp].clone()
            shards[(s, r)] = sd
    return shards


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    bad = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not bad, bad[:5]


LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]


# ------------------------------------------------------------------------------------------------------------
# megatron shards -> full HF tensors
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp,pp", LAYOUTS)
@pytest.mark.parametrize("te_names", [False, True])
def test_shards_convert_back_bit_exact(tp, pp, te_names):
    cfg = tiny_llama(num_layers=4)  # GQA 4 heads / 2 groups, untied, vocab 1000 padded to 1024
    hf = random_hf(cfg)
    got = convert.megatron_shards_to_hf(megatron_shards(hf, cfg, tp, pp, te_names), cfg, tp, pp)
    assert_same(got, hf)


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_tied_embeddings_and_qkv_bias(tp, pp):
    cfg = tiny_llama(num_layers=2, share_embeddings_and_output_weights=True, qkv_bias=True)
    hf = random_hf(cfg, seed=3)
    assert "lm_head.weight" not in hf
    got = convert.megatron_shards_to_hf(megatron_shards(hf, cfg, tp, pp), cfg, tp, pp)
    assert_same(got, hf)  # no lm_head, the last stage's copy of the embedding is not an extra tensor


def test_dtype_cast_and_own_storage():
    cfg = tiny_llama()
    hf = random_hf(cfg)
    got = convert.megatron_shards_to_hf(megatron_shards(hf, cfg, 2, 1), cfg, 2, 1, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in got.values())
    assert torch.equal(got["model.layers.1.self_attn.k_proj.weight"],
                       hf["model.layers.1.self_attn.k_proj.weight"].bfloat16())
    ptrs = [t.untyped_storage().data_ptr() for t in got.values()]
    assert len(set(ptrs)) == len(ptrs)  # q/k/v and gate/up are not views of one gathered tensor


def test_real_megatron_model_matches_existing_tp1_export(megatron_single):
    """TP=1 in-process GPTModel: same HF tensors as the repo's single-process export map."""
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.hf.weights_llama import megatron_to_hf

    cfg = tiny_llama()
    model = build_gpt_model(cfg)
    state = model.state_dict()
    got = convert.megatron_shards_to_hf({(0, 0): state}, cfg, 1, 1)
    want = megatron_to_hf({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, cfg)
    assert_same(got, want)


def test_leftover_missing_and_unsupported_are_refused():
    cfg = tiny_llama()
    hf = random_hf(cfg)
    shards = megatron_shards(hf, cfg, 1, 1)
    shards[(0, 0)]["decoder.layers.0.self_attention.q_layernorm.weight"] = torch.ones(16)
    with pytest.raises(HFConversionError, match="not converted.*q_layernorm"):
        convert.megatron_shards_to_hf(shards, cfg, 1, 1)
    shards = megatron_shards(hf, cfg, 2, 1)
    del shards[(0, 1)]["decoder.layers.1.mlp.linear_fc2.weight"]
    with pytest.raises(HFConversionError, match="tp rank 1.*linear_fc2"):
        convert.megatron_shards_to_hf(shards, cfg, 2, 1)
    with pytest.raises(HFConversionError, match="tp=2, pp=2"):
        convert.megatron_shards_to_hf(shards, cfg, 2, 2)
    with pytest.raises(HFConversionError, match="pipeline stages hold"):
        convert.megatron_shards_to_hf(megatron_shards(hf, cfg, 1, 2), tiny_llama(num_layers=3), 1, 2)
    with pytest.raises(HFConversionError, match="normalization=layernorm"):
        convert.megatron_shards_to_hf(megatron_shards(hf, cfg, 1, 1), tiny_llama(normalization="layernorm"),
                                      1, 1)


@pytest.mark.parametrize("tied", [False, True])
def test_group_count_is_known_from_config(tied):
    cfg = tiny_llama(num_layers=4, share_embeddings_and_output_weights=tied)
    shards = megatron_shards(random_hf(cfg), cfg, 1, 2)
    for stage in range(2):
        st = convert.local_names(shards[(stage, 0)])
        groups = list(convert.stage_groups(lambda k, st=st: [st[k]], cfg, stage, 2, 2, 2 * stage))
        assert len(groups) == convert.stage_group_count(cfg, stage, 2, 2)


# ------------------------------------------------------------------------------------------------------------
# full HF tensors -> TP=k engine shards
# ------------------------------------------------------------------------------------------------------------
def _attention(x, q_w, k_w, v_w, o_w, hd):
    """Causal GQA attention of one layer (no RoPE; it acts per head and does not affect the split)."""
    b, s, _ = x.shape
    q = (x @ q_w.T).view(b, s, -1, hd).transpose(1, 2)  # [B, nq, S, hd]
    k = (x @ k_w.T).view(b, s, -1, hd).transpose(1, 2)  # [B, nkv, S, hd]
    v = (x @ v_w.T).view(b, s, -1, hd).transpose(1, 2)
    rep = q.shape[1] // k.shape[1]  # query heads per kv head (GQA, Ainslie et al. 2023)
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, nq, S, hd]
    return o.transpose(1, 2).reshape(b, s, -1) @ o_w.T  # [B, S, H]


def _mlp(x, gate, up, down):
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T  # SwiGLU (Shazeer 2020, eq. 6)


@pytest.mark.parametrize("heads,groups,tp", [(4, 2, 2), (4, 2, 1), (8, 2, 4), (4, 1, 2), (8, 8, 4)])
def test_engine_shards_are_the_right_heads_and_sum_to_the_full_layer(heads, groups, tp):
    cfg = tiny_llama(num_attention_heads=heads, num_query_groups=groups, hidden_size=64, kv_channels=8)
    hf = random_hf(cfg, seed=5)
    ranks = reshard.reshard_for_tp(hf, cfg, tp)
    hd, p = cfg.head_dim(), "model.layers.0."
    for r, sd in enumerate(ranks):
        qh = list(range(r * heads // tp, (r + 1) * heads // tp))  # this rank's query heads
        kvh = sorted({h // (heads // groups) for h in qh})  # the kv heads they attend to
        idx = lambda hs: torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in hs])  # noqa: E731
        assert torch.equal(sd[p + "self_attn.q_proj.weight"], hf[p + "self_attn.q_proj.weight"][idx(qh)])
        assert torch.equal(sd[p + "self_attn.k_proj.weight"], hf[p + "self_attn.k_proj.weight"][idx(kvh)])
        assert torch.equal(sd[p + "self_attn.v_proj.weight"], hf[p + "self_attn.v_proj.weight"][idx(kvh)])
        assert torch.equal(sd[p + "self_attn.o_proj.weight"], hf[p + "self_attn.o_proj.weight"][:, idx(qh)])
        assert torch.equal(sd[p + "input_layernorm.weight"], hf[p + "input_layernorm.weight"])
    x = torch.randn(2, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = [p + f"self_attn.{n}_proj.weight" for n in "qkvo"]
    full = _attention(x, *(hf[n].double() for n in names), hd)
    # row-parallel o_proj: the engine all-reduces (sums) the ranks' partial outputs
    parts = sum(_attention(x, *(sd[n].double() for n in names), hd) for sd in ranks)
    torch.testing.assert_close(parts, full, atol=1e-10, rtol=1e-10)
    names = [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
    parts = sum(_mlp(x, *(sd[n].double() for n in names)) for sd in ranks)
    torch.testing.assert_close(parts, _mlp(x, *(hf[n].double() for n in names)), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("vocab,tp", [(1000, 2), (1001, 2), (1000, 3), (7, 4)])
def test_vocab_parallel_shards_pad_and_match(vocab, tp):
    cfg = tiny_llama(vocab_size=vocab, num_attention_heads=12, num_query_groups=12, hidden_size=48,
                     ffn_hidden_size=24 * tp)
    hf = random_hf(cfg, seed=9)
    ranks = reshard.reshard_for_tp(hf, cfg, tp)
    padded = -(-vocab // tp) * tp
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = torch.cat([sd[name] for sd in ranks])
        assert rows.shape[0] == padded and {sd[name].shape[0] for sd in ranks} == {padded // tp}
        assert torch.equal(rows[:vocab], hf[name]) and not rows[vocab:].any()
    ids = torch.randint(0, vocab, (3, 6), generator=torch.Generator().manual_seed(2))
    per = padded // tp
    looked = torch.zeros(3, 6, cfg.hidden_size)
    for r, sd in enumerate(ranks):  # vocab-parallel lookup: ids outside the rank's range give 0, then sum
        local = ids - r * per
        mine = (local >= 0) & (local < per)
        looked += F.embedding(local.clamp(0, per - 1), sd["model.embed_tokens.weight"]) * mine[..., None]
    assert torch.equal(looked, F.embedding(ids, hf["model.embed_tokens.weight"]))
    x = torch.randn(4, cfg.hidden_size)
    logits = torch.cat([x @ sd["lm_head.weight"].T for sd in ranks], dim=-1)[:, :vocab]
    torch.testing.assert_close(logits, x @ hf["lm_head.weight"].T)


@pytest.mark.parametrize("src_tp,src_pp,dst_tp", [(1, 1, 1), (2, 1, 2), (2, 1, 1), (1, 2, 1), (2, 2, 4)])
def test_end_to_end_source_layout_to_engine_layout(src_tp, src_pp, dst_tp):
    """TP 1 -> 1, 2 -> 2, 2 -> 1, PP 2 -> 1 and 2x2 -> 4 (fewer kv groups than engine ranks)."""
    cfg = tiny_llama(num_layers=4)
    hf = random_hf(cfg, seed=11)
    full = convert.megatron_shards_to_hf(megatron_shards(hf, cfg, src_tp, src_pp), cfg, src_tp, src_pp)
    got = reshard.reshard_for_tp(full, cfg, dst_tp)
    want = reshard.reshard_for_tp(hf, cfg, dst_tp)
    for g, w in zip(got, want):
        assert_same(g, w)
    if dst_tp == 1:
        assert_same(got[0], hf)
    if dst_tp == src_tp and src_pp == 1:  # the engine rank's q heads are megatron rank r's q heads
        shards = megatron_shards(hf, cfg, src_tp, 1)
        per, hd = cfg.num_attention_heads // cfg.query_groups(), cfg.head_dim()
        for r in range(dst_tp):
            qkv = shards[(0, r)]["decoder.layers.2.self_attention.linear_qkv.weight"]
            qkv = qkv.view(-1, (per + 2) * hd, cfg.hidden_size)[:, : per * hd].reshape(-1, cfg.hidden_size)
            assert torch.equal(got[r]["model.layers.2.self_attn.q_proj.weight"], qkv)


def test_engine_layouts_that_cannot_split_are_refused():
    with pytest.raises(HFConversionError, match="num_attention_heads=4"):
        reshard.check_target_tp(tiny_llama(), 3)
    with pytest.raises(HFConversionError, match="num_query_groups=6"):
        reshard.check_target_tp(tiny_llama(num_attention_heads=12, num_query_groups=6, hidden_size=48), 4)
    with pytest.raises(HFConversionError, match="no tensor-parallel layout"):
        reshard.shard_for_rank({"model.layers.0.self_attn.rotary.weight": torch.ones(2)}, tiny_llama(), 2, 0)


# ------------------------------------------------------------------------------------------------------------
# bounded buckets
# ------------------------------------------------------------------------------------------------------------
def test_buckets_are_bounded_complete_and_keep_groups_whole():
    cfg = tiny_llama(num_layers=4)
    hf = random_hf(cfg)
    shards = megatron_shards(hf, cfg, 2, 2)
    groups = list(convert.iter_hf_groups(shards, cfg, 2, 2))
    limit = 40_000  # bytes: q/k/v of a layer (~33 KiB fp32) fits, the 256 KiB embedding does not
    buckets = list(convert.iter_buckets(iter(groups), limit))
    names = [n for b in buckets for n, _ in b]
    assert sorted(names) == sorted(hf) and len(names) == len(set(names))  # every tensor exactly once
    for b in buckets:
        size = sum(convert.nbytes(t) for _, t in b)
        whole = any([n for n, _ in g] == [n for n, _ in b] for g in groups)
        assert size <= limit or whole  # over the bound only as one single oversize group
    first = {n: i for i, b in enumerate(buckets) for n, _ in b}
    for g in groups:
        assert len({first[n] for n, _ in g}) == 1  # q/k/v, gate/up never split across buckets
    assert max(len(b) for b in buckets) > 3  # small tensors do share buckets


def test_buckets_consume_groups_lazily():
    produced = []

    def groups():
        for i in range(10):
            produced.append(i)
            yield [(f"t{i}", torch.zeros(10))]  # 40 bytes each

    it = convert.iter_buckets(groups(), 100)
    first = next(it)
    assert [n for n, _ in first] == ["t0", "t1"] and len(produced) == 3  # one group of look-ahead only
    assert sum(len(b) for b in it) == 8
    with pytest.raises(ValueError):
        next(convert.iter_buckets(groups(), 0))


def test_dataclass_helper_sanity():
    cfg = dataclasses.replace(tiny_llama(), vocab_size=None)
    with pytest.raises(HFConversionError, match="vocab_size"):
        convert.check_llama_family(cfg)
