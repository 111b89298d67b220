"""``models.attention.SDPADotProductAttention`` against megatron's own ``DotProductAttention``.

Same config, same inputs: outputs and input gradients agree (fp32) on the SDPA path (causal, GQA, one-row
decoding, query-key layer scaling, no-mask types), and the cases it hands to megatron (explicit masks, sliding
windows, ``sq != sk``) give megatron's result bit for bit.
"""

import pytest
import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models.gpt import layer_spec, transformer_config_from


def _pair(megatron_single, mask_type=None, **kw):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_align.models.attention import SDPADotProductAttention

    cfg = ModelConfig(**{"hidden_size": 48, "num_attention_heads": 4, **kw})
    tc = transformer_config_from(cfg)
    mt = mask_type or AttnMaskType.causal
    args = dict(config=tc, layer_number=2, attn_mask_type=mt, attention_type="self")
    return DotProductAttention(**args), SDPADotProductAttention(**args), cfg


def _qkv(cfg, sq, sk, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    heads, groups, hd = cfg.num_attention_heads, cfg.query_groups(), cfg.head_dim()
    q = torch.randn(sq, b, heads, hd, generator=g)  # [sq, b, np, hn]
    k = torch.randn(sk, b, groups, hd, generator=g)  # [sk, b, ng, hn]
    v = torch.randn(sk, b, groups, hd, generator=g)  # [sk, b, ng, hn]
    return [t.requires_grad_() for t in (q, k, v)]


def _run(module, qkv, mask=None):
    q, k, v = (t.detach().clone().requires_grad_() for t in qkv)
    out = module(q, k, v, mask)  # [sq, b, np*hn]
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in (q, k, v)]


@pytest.mark.parametrize("kw, sq, sk", [
    ({}, 7, 7),                                  # causal, MHA, odd length
    ({"num_query_groups": 2}, 13, 13),           # GQA
    ({}, 1, 9),                                  # one-row decoding: no mask
    ({"apply_query_key_layer_scaling": True}, 5, 5),
])
def test_sdpa_path_matches_megatron(megatron_single, kw, sq, sk):
    ref, ours, cfg = _pair(megatron_single, **kw)
    qkv = _qkv(cfg, sq, sk)
    out_r, grads_r = _run(ref, qkv)
    out_o, grads_o = _run(ours, qkv)
    torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-5)
    for go, gr in zip(grads_o, grads_r):
        torch.testing.assert_close(go, gr, rtol=1e-5, atol=1e-5)


def test_no_mask_type_attends_everywhere(megatron_single):
    from megatron.core.transformer.enums import AttnMaskType

    ref, ours, cfg = _pair(megatron_single, mask_type=AttnMaskType.padding)
    qkv = _qkv(cfg, 6, 6)
    torch.testing.assert_close(_run(ours, qkv)[0], _run(ref, qkv)[0], rtol=1e-5, atol=1e-5)


def test_explicit_masks_and_odd_shapes_take_megatrons_path(megatron_single):
    ref, ours, cfg = _pair(megatron_single)
    qkv = _qkv(cfg, 6, 6)
    mask = torch.ones(6, 6, dtype=torch.bool).tril().logical_not()  # [s, s] True = blocked
    mask[3, :] = True  # a fully masked row: megatron's -10000 fill, not SDPA's NaN
    mask = mask.view(1, 1, 6, 6).expand(3, 1, 6, 6)
    out_o, grads_o = _run(ours, qkv, mask)
    out_r, grads_r = _run(ref, qkv, mask)
    assert torch.equal(out_o, out_r) and all(torch.equal(a, b) for a, b in zip(grads_o, grads_r))
    assert torch.isfinite(out_o).all()
    with pytest.raises(AssertionError):  # megatron's own refusal of a causal mask over sq != sk
        ours(*_qkv(cfg, 4, 6), None)


def test_layer_spec_uses_it(megatron_single):
    from megatron_align.models.attention import SDPADotProductAttention

    spec = layer_spec(ModelConfig())
    assert spec.submodules.self_attention.submodules.core_attention is SDPADotProductAttention


def test_whole_model_matches_megatrons_attention(megatron_single):
    """A tiny GPT (GQA) built with our spec and with megatron's plain local spec: same loss and gradients."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megatron_align.distributed import seed_all
    from megatron_align.models.attention import SDPADotProductAttention
    from megatron_align.models.gpt import gpt_model_kwargs

    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, vocab_size=256)
    tok = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(24).expand(2, -1)
    results = []
    for core in (None, DotProductAttention):
        seed_all(5, 0)
        kw = gpt_model_kwargs(cfg)
        if core is not None:
            block = kw["transformer_layer_spec"]  # TransformerBlockSubmodules: one layer spec, repeated
            layer = block.layer_specs[0] if hasattr(block, "layer_specs") else block
            layer.submodules.self_attention.submodules.core_attention = core
        model = GPTModel(**kw)
        used = type(model.decoder.layers[0].self_attention.core_attention)
        assert used is (core or SDPADotProductAttention)
        loss = model(tok, pos, None, labels=tok.roll(-1, 1))  # [B, S]
        loss.sum().backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_o, grads_o), (loss_r, grads_r) = results
    torch.testing.assert_close(loss_o, loss_r, rtol=1e-5, atol=1e-5)
    for name, g in grads_r.items():
        torch.testing.assert_close(grads_o[name], g, rtol=1e-4, atol=1e-5, msg=name)
