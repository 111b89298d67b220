"""Attribute-conditioned SFT is wired: the label line reaches the prompt as the SteerLM seed writes it, the
response tokens are trained while the label is context, and changing only the label changes the model's loss
on the same response. Also: the seed's SFT command loads with only paths and sizes changed."""

import re

import torch

from megatron_align.data.nemo_chat import encode_chat
from megatron_align.tokenizers import train_sentencepiece
from tests.helpers import ROOT

# the SFT command of the SteerLM seed (shared/seeds/001_c0b1a6533b5f01b8.txt), copied as the user wrote it
SEED_COMMAND = ROOT / "tests" / "data" / "seed_sft_command.txt"
LABEL_HI = ("quality:4,toxicity:0,humor:4,creativity:4,helpfulness:4,correctness:4,coherence:4,complexity:2,"
            "verbosity:2")
LABEL_LO = ("quality:0,toxicity:0,humor:0,creativity:0,helpfulness:0,correctness:0,coherence:0,complexity:0,"
            "verbosity:0")


def _record(label):
    return {"system": "A chat between a curious user and an artificial intelligence assistant.",
            "mask": "User", "type": "VALUE_TO_TEXT",
            "conversations": [{"from": "User", "value": "Tell me a joke about cats."},
                              {"from": "Assistant", "label": label,
                               "value": "Why did the cat sit on the computer? To keep an eye on the mouse!"}]}


def test_label_line_in_prompt_and_label_changes_the_loss(tmp_path, megatron_single):
    from megatron_align.models.gpt import build_gpt_model
    from tests.helpers import tiny_llama

    texts = [_record(LABEL_HI)["system"], "Tell me a joke about cats.", LABEL_HI, LABEL_LO, "System", "User",
             "Why did the cat sit on the computer? To keep an eye on the mouse!", "Assistant"]
    tok = train_sentencepiece(texts * 20, tmp_path / "tok", vocab_size=400)
    from megatron_align.tokenizers import load_tokenizer

    tok = load_tokenizer("sentencepiece", tok)
    ids_hi, mask_hi = encode_chat(_record(LABEL_HI), tok)
    ids_lo, mask_lo = encode_chat(_record(LABEL_LO), tok)
    text_hi = tok.ids_to_text(ids_hi, skip_special=False)
    # the seed's prompt: "...<extra_id_1>Assistant\n<extra_id_2>{values}\n" then the response
    assert f"<extra_id_1>Assistant\n<extra_id_2>{LABEL_HI}\nWhy did the cat" in text_hi
    # targets are exactly the response (+ end of turn), the same tokens for both labels; the label is context
    tgt_hi = [i for i, m in zip(ids_hi, mask_hi) if m]
    tgt_lo = [i for i, m in zip(ids_lo, mask_lo) if m]
    assert tgt_hi == tgt_lo and len(tgt_hi) > 5
    label_ids = tok.text_to_ids(LABEL_HI)
    first_target = mask_hi.index(1)
    assert all(m == 0 for m in mask_hi[:first_target]) and re.search(LABEL_HI, tok.ids_to_text(
        ids_hi[:first_target], skip_special=False))
    assert len(label_ids) > 0

    cfg = tiny_llama(vocab_size=tok.vocab_size, make_vocab_size_divisible_by=64)
    model = build_gpt_model(cfg)
    model.eval()

    def response_loss(ids, mask):
        t = torch.tensor([ids])
        labels = torch.roll(t, -1, 1)
        m = torch.tensor([mask[1:] + [0]], dtype=torch.float32)
        with torch.no_grad():
            per_tok = model(t, torch.arange(len(ids)).unsqueeze(0), None, labels=labels)  # [1, S]
        return float((per_tok * m).sum() / m.sum())

    assert abs(response_loss(ids_hi, mask_hi) - response_loss(ids_lo, mask_lo)) > 1e-4


def _seed_sft_overrides():
    """The seed document's train_gpt_sft.py command, as key=value overrides."""
    block = SEED_COMMAND.read_text()
    out = []
    for line in block.splitlines()[1:]:
        item = line.strip().rstrip("\\").strip()
        if "=" in item:
            out.append(item.replace("\\'", "'").replace("\\<", "<").replace("\\>", ">"))
    return out


def test_seed_sft_command_names_our_script_at_its_nemo_aligner_path():
    words = SEED_COMMAND.read_text().split()
    assert words[:2] == ["python", "examples/nlp/gpt/train_gpt_sft.py"]
    assert (ROOT / words[1]).is_file()


def test_seed_sft_command_loads_with_paths_and_sizes_changed(tmp_path):
    from megatron_align.config import load_config
    from megatron_align.config.model import ModelConfig
    from megatron_align.config.stages.sft import SFTConfig
    from megatron_align.models.checkpoint import write_model_config

    # the checkpoint the command restores decides the architecture (a 70B-like head count, tiny otherwise)
    (tmp_path / "restore_from_path").mkdir()
    write_model_config(ModelConfig(num_layers=4, hidden_size=128, num_attention_heads=16, num_query_groups=8,
                                   ffn_hidden_size=256, vocab_size=1000),
                       tmp_path / "restore_from_path" / "model_config.yaml")
    overrides = _seed_sft_overrides()
    assert any(o.startswith("model.data.chat_prompt_tokens.label_start=") for o in overrides)
    changed = []
    for o in overrides:
        key, value = o.split("=", 1)
        if key.endswith(("file_path", "restore_from_path", "explicit_log_dir", "index_mapping_dir")):
            value = str(tmp_path / key.split(".")[-1])
        changed.append(f"{key}={value}")
    cfg = load_config(SFTConfig, ROOT / "conf" / "gpt_sft.yaml", changed)
    assert cfg.trainer.sft.max_steps == 800 and cfg.model.answer_only_loss is True
    assert cfg.model.data.chat_prompt_tokens.label_start == "<extra_id_2>"
    assert cfg.model.tensor_model_parallel_size == 8 and cfg.model.pipeline_model_parallel_size == 2
    assert cfg.model.activations_checkpoint_granularity == "selective"
    assert cfg.model.data.train_ds.global_batch_size == 128
    assert cfg.model.num_attention_heads == 16 and cfg.model.hidden_size == 128  # from the checkpoint
