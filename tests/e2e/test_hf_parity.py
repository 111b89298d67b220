"""Our megatron model vs Hugging Face transformers on the same weights: import, logit parity, export back.

Tiny random HF models (no downloads): a GQA Llama (4 heads / 2 kv heads, untied, vocab 1000 -> padded 1024,
rope_theta 50000, sharded safetensors), a Qwen2 (QKV biases, tied), a Mistral (MQA) and a GPT-2 (tied, learned
positions).
For each: ``import_hf`` -> load the checkpoint into our GPTModel -> logits equal HF's on random tokens (fp32,
max abs diff <= 1e-4 over the real vocabulary); ``export_hf`` -> every tensor equals the original and
transformers loads the exported directory and gives the same logits.

The helpers ``make_tiny_hf``, ``hf_reference_logits`` and ``megatron_logits`` are written to be reused by a
2-rank test (tests/distributed): ``megatron_logits`` builds the model at whatever TP/PP layout is initialised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 1000
SEQ = 12
ATOL = 1e-4
INIT = 0.1
"""Weight std: attention far from uniform, so a RoPE or q/k mapping slip shows in the logits."""


# ------------------------------------------------------------------------------------------------------------
# helpers (reusable from a distributed test)
# ------------------------------------------------------------------------------------------------------------
def _save_tokenizer(out_dir: Path) -> None:
    """A tiny word-level HF tokenizer (ids < VOCAB) with <s>, </s>, <unk>, saved next to the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(60)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))


def make_tiny_hf(kind: str, out_dir: str | Path, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """Save a random tiny HF causal LM of ``kind`` (llama | qwen2 | mistral | gpt2) + tokenizer."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=50000.0, rms_norm_eps=1e-5,
            max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            initializer_range=INIT,
        )
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=20000.0, max_position_embeddings=128,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, initializer_range=INIT,
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    elif kind == "mistral":
        cfg = transformers.MistralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128, sliding_window=None,
            bos_token_id=1, eos_token_id=2, initializer_range=INIT,
        )
        model = transformers.MistralForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2,
            initializer_range=INIT,
        )
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(kind)
    # HF's init leaves norms at 1 and biases at 0: randomise them so the map of every tensor is tested
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out_dir), **kwargs)
    _save_tokenizer(out_dir)
    return out_dir


def random_tokens(batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    """``[B, S]`` token ids below VOCAB."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=gen)


@torch.no_grad()
def hf_reference_logits(hf_dir: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, S, V]`` (fp32) of transformers' model loaded from ``hf_dir`` on ``tokens [B, S]``."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    return model(input_ids=tokens).logits.float()


@torch.no_grad()
def megatron_logits(ckpt_dir: str | Path, tokens: torch.Tensor, precision: str = "32") -> torch.Tensor:
    """Gathered logits ``[B, S, V_padded]`` of our GPTModel from ``ckpt_dir``, at the current TP/PP layout.

    The parallel state must be initialised (``megatron_align.distributed.start``); PP must be 1.
    """
    import dataclasses

    from megatron.core import parallel_state as ps

    from megatron_align.models.checkpoint import load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model

    cfg = read_model_config(ckpt_dir)
    cfg = dataclasses.replace(
        cfg,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
    )
    model = build_gpt_model(cfg, precision=precision, parallel_output=False)
    load_checkpoint(ckpt_dir, model)
    model.eval()
    b, s = tokens.shape
    position_ids = torch.arange(s).unsqueeze(0).expand(b, s)  # [B, S]
    return model(tokens, position_ids, attention_mask=None).float()  # [B, S, Vp]


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from megatron_align.models.hf.convert import read_hf_state_dict

    return read_hf_state_dict(directory)


# ------------------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------------------
CASES = {
    # kind: (make_tiny_hf kwargs, model_type to export as)
    "llama": ({"max_shard_size": "150KB"}, "llama"),
    "qwen2": ({}, "qwen2"),
    "mistral": ({}, "mistral"),  # MQA (1 kv head); its architecture is Llama's, so it must be named on export
    "gpt2": ({}, "gpt2"),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, megatron_single):
    """Per kind: (hf_dir, ckpt_dir, reference logits), converted once per module."""
    from megatron_align.models.hf import import_hf

    cache: dict[str, tuple[Path, Path, torch.Tensor]] = {}

    def get(kind: str):
        if kind not in cache:
            root = tmp_path_factory.mktemp(kind)
            hf_dir = make_tiny_hf(kind, root / "hf", **CASES[kind][0])
            ckpt = import_hf(hf_dir, root / "ckpt")
            cache[kind] = (hf_dir, ckpt, hf_reference_logits(hf_dir, random_tokens()))
        return cache[kind]

    return get


# ------------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CASES))
def test_import_logits_match_hf(kind, converted):
    hf_dir, ckpt, ref = converted(kind)
    ours = megatron_logits(ckpt, random_tokens())  # [B, S, Vp]
    assert ours.shape[-1] == 1024  # vocabulary padded to a multiple of 128
    diff = (ours[..., :VOCAB] - ref).abs().max().item()
    assert diff <= ATOL, f"{kind}: max abs logit diff {diff:.3e}"
    assert torch.count_nonzero(ours[..., VOCAB:]) == 0  # padded rows are zero
    assert (ckpt / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("kind", list(CASES))
def test_export_round_trip(kind, converted, tmp_path):
    from megatron_align.models.hf import export_hf

    hf_dir, ckpt, ref = converted(kind)
    model_type = CASES[kind][1] if kind == "mistral" else None  # the others: implied by the architecture
    out = export_hf(ckpt, tmp_path / "export", model_type=model_type)
    original, exported = _read_safetensors(hf_dir), _read_safetensors(out)
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype, name
        assert torch.equal(exported[name], tensor), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == CASES[kind][1]
    assert config["eos_token_id"] == 2 and config["bos_token_id"] == 1
    assert (out / "tokenizer.json").is_file()
    again = hf_reference_logits(out, random_tokens())
    assert torch.allclose(again, ref, atol=1e-6, rtol=0)


def test_llama_config_fields_survive(converted, tmp_path):
    from megatron_align.models.checkpoint import read_model_config

    _, ckpt, _ = converted("llama")
    cfg = read_model_config(ckpt)
    assert (cfg.num_query_groups, cfg.rotary_base, cfg.vocab_size) == (2, 50000.0, VOCAB)
    assert not cfg.share_embeddings_and_output_weights and cfg.tokenizer.library == "huggingface"


def test_bf16_import_and_export(converted, tmp_path):
    from megatron_align.models.hf import export_hf, import_hf

    hf_dir, _, ref = converted("llama")
    ckpt = import_hf(hf_dir, tmp_path / "ckpt_bf16", precision="bf16")
    out = export_hf(ckpt, tmp_path / "export_bf16", dtype="bfloat16")
    original, exported = _read_safetensors(hf_dir), _read_safetensors(out)
    for name, tensor in original.items():
        assert exported[name].dtype == torch.bfloat16
        assert torch.equal(exported[name], tensor.to(torch.bfloat16)), name
    ours = megatron_logits(ckpt, random_tokens(), precision="bf16")
    assert (ours[..., :VOCAB] - ref).abs().max().item() < 0.1


def test_cli_round_trip_gpt2(converted, tmp_path):
    from megatron_align.cli.convert import convert_main

    hf_dir, _, ref = converted("gpt2")
    assert convert_main(["--from-hf", str(hf_dir), "--out", str(tmp_path / "ckpt")]) == 0
    argv = ["--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"), "--dtype", "float32"]
    assert convert_main(argv) == 0
    assert torch.allclose(hf_reference_logits(tmp_path / "hf", random_tokens()), ref, atol=1e-6, rtol=0)
    with pytest.raises(SystemExit) as exc:  # refuses to overwrite
        convert_main(["--from-hf", str(hf_dir), "--out", str(tmp_path / "ckpt")])
    assert exc.value.code == 2
