"""Tests for megatron_align.tokenizers: tiny sentencepiece and HF BPE models trained on the fly, no downloads.

Covers round trips, the SteerLM ``<extra_id_0..2>`` markers as single ids, bos/eos/pad conventions,
save/reload, HF directories written by transformers (and ours read by transformers), and one-line errors for
users.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from megatron_align.tokenizers import (
    EXTRA_ID_TOKENS,
    METADATA_FILE,
    STEERLM_CHAT_TEMPLATE,
    HFTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    detect_library,
    load_tokenizer,
    load_tokenizer_from_dir,
    require_tokens,
    sp_proto,
    train_hf_bpe,
    train_sentencepiece,
)

WORDS = [
    *("the", "a", "an", "cat", "dog", "bird", "runs", "jumps", "flies", "over", "under", "lazy", "quick"),
    *("brown", "red", "fox", "model", "user", "assistant", "answer", "question", "helpful", "honest"),
    *("harmless", "reward", "policy", "value", "train", "step", "loss", "good", "bad", "why", "how", "what"),
    *(
        "is",
        "are",
        "was",
        "café",
        "naïve",
        "über",
        "日本",
        "語",
        "--",
        ",",
        ".",
        "?",
        "!",
        "(",
        ")",
        ":",
        ";",
    ),
    *("'quoted'", '"double"'),
]

SAMPLES = [
    "the quick brown fox jumps over the lazy dog.",
    "<extra_id_0>System\nA chat between a user and an assistant.\n<extra_id_1>User\nwhy?\n<extra_id_1>Bot\n",
    "<extra_id_2>quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4\n",
    "  leading spaces, trailing spaces   ",
    " one leading space",
    "digits 1234567 and unseen characters: Ωmega ☃ 🙂 ZEBRA",
    "tabs\tand\nnewlines\n\nkept",
]


def _corpus(n: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**6)))
        lines.append(" ".join(words))
    return lines


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory, corpus) -> str:
    out = str(tmp_path_factory.mktemp("sp"))
    train_sentencepiece(corpus, out, vocab_size=600)
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, corpus) -> str:
    out = str(tmp_path_factory.mktemp("hf"))
    train_hf_bpe(corpus, out, vocab_size=600)
    return out


@pytest.fixture(params=["sp", "hf"])
def tok(request, sp_dir, hf_dir):
    return load_tokenizer_from_dir(sp_dir if request.param == "sp" else hf_dir)


# ---------------------------------------- both libraries
def test_roundtrip(tok):
    for text in SAMPLES:
        ids = tok.text_to_ids(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.ids_to_text(ids) == text


def test_extra_ids_are_single_tokens(tok):
    ids = require_tokens(tok)
    assert sorted(ids) == sorted(EXTRA_ID_TOKENS) and len(set(ids.values())) == 3
    for token, tid in ids.items():
        assert tok.token_to_id(token) == tid and tok.special_token_ids[token] == tid
        encoded = tok.text_to_ids(f"User\n{token}Assistant{token}")
        assert encoded.count(tid) == 2
    assert tok.token_to_id("<extra_id_9>") is None


def test_bos_eos_only_on_request(tok):
    plain = tok.text_to_ids("the dog")
    assert tok.bos_id not in plain and tok.eos_id not in plain
    assert tok.text_to_ids("the dog", add_bos=True) == [tok.bos_id] + plain
    assert tok.text_to_ids("the dog", add_bos=True, add_eos=True) == [tok.bos_id] + plain + [tok.eos_id]
    assert tok.texts_to_ids(["the dog", "a cat"], add_eos=True) == [
        plain + [tok.eos_id],
        tok.text_to_ids("a cat") + [tok.eos_id],
    ]


def test_skip_special_drops_bos_eos_pad_but_keeps_markers(tok):
    marker = tok.token_to_id("<extra_id_1>")
    ids = [tok.bos_id] + tok.text_to_ids("the cat") + [marker, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.ids_to_text(ids) == "the cat<extra_id_1>"
    full = tok.ids_to_text(ids, skip_special=False)
    assert full.startswith(tok.bos_token + "the cat<extra_id_1>" + tok.eos_token)


@pytest.mark.parametrize("kind", ["sp", "hf"])
def test_save_then_load_gives_identical_tokenizer(kind, sp_dir, hf_dir, tmp_path):
    original = load_tokenizer_from_dir(sp_dir if kind == "sp" else hf_dir)
    out = original.save(str(tmp_path / "saved"))
    with open(os.path.join(out, METADATA_FILE)) as f:
        assert json.load(f)["library"] == original.library
    loaded = load_tokenizer_from_dir(out)
    assert type(loaded) is type(original)
    assert loaded.texts_to_ids(SAMPLES) == original.texts_to_ids(SAMPLES)
    for attr in ("vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "special_token_ids", "chat_template"):
        assert getattr(loaded, attr) == getattr(original, attr), attr


# ---------------------------------------- sentencepiece
def test_sentencepiece_ids_and_layout(sp_dir):
    tok = load_tokenizer("sentencepiece", os.path.join(sp_dir, "tokenizer.model"))
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert not tok.has_pad_token and tok.pad_id == tok.eos_id == 2  # Llama-2 layout: pad falls back to eos
    assert require_tokens(tok) == {"<extra_id_0>": 3, "<extra_id_1>": 4, "<extra_id_2>": 5}
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    assert tok.chat_template is None
    assert 300 < tok.vocab_size <= 600


def test_sentencepiece_piece_types_match_library(sp_dir):
    with open(os.path.join(sp_dir, "tokenizer.model"), "rb") as f:
        types = sp_proto.piece_types(f.read())
    tok = load_tokenizer_from_dir(sp_dir)
    assert len(types) == tok.vocab_size
    assert types[:6] == [
        ("<unk>", sp_proto.UNKNOWN),
        ("<s>", sp_proto.CONTROL),
        ("</s>", sp_proto.CONTROL),
        ("<extra_id_0>", sp_proto.USER_DEFINED),
        ("<extra_id_1>", sp_proto.USER_DEFINED),
        ("<extra_id_2>", sp_proto.USER_DEFINED),
    ]
    assert types[6] == ("<0x00>", sp_proto.BYTE)


def test_sentencepiece_unigram_with_pad(tmp_path, corpus):
    path = train_sentencepiece(corpus, str(tmp_path), vocab_size=500, model_type="unigram", with_pad=True)
    tok = load_tokenizer("sentencepiece", path)
    assert tok.has_pad_token and tok.pad_id == 3 and tok.eos_id == 2
    assert require_tokens(tok) == {"<extra_id_0>": 4, "<extra_id_1>": 5, "<extra_id_2>": 6}
    assert tok.ids_to_text(tok.text_to_ids(SAMPLES[1])) == SAMPLES[1]


def test_sentencepiece_training_is_deterministic(tmp_path, corpus):
    paths = [train_sentencepiece(corpus, str(tmp_path / name), vocab_size=600) for name in ("a", "b")]
    # The files differ only in the trainer spec's model_prefix (the output path); vocabularies must match.
    vocabs = []
    for path in paths:
        with open(path, "rb") as f:
            vocabs.append(sp_proto.piece_types(f.read()))
    assert vocabs[0] == vocabs[1]
    a, b = (load_tokenizer("sentencepiece", p) for p in paths)
    assert a.texts_to_ids(SAMPLES) == b.texts_to_ids(SAMPLES)


def test_sentencepiece_missing_markers_error_then_add(tmp_path, corpus):
    path = train_sentencepiece(corpus, str(tmp_path / "plain"), vocab_size=500, user_defined_symbols=())
    tok = load_tokenizer("sentencepiece", path)
    with pytest.raises(
        TokenizerError, match=r"tokenizer\.model: .*<extra_id_0>, <extra_id_1>, <extra_id_2>"
    ) as err:
        require_tokens(tok)
    assert "\n" not in str(err.value)
    size = tok.vocab_size
    ids = require_tokens(tok, add_missing=True)
    assert list(ids.values()) == [size, size + 1, size + 2] and tok.vocab_size == size + 3
    assert tok.text_to_ids("a<extra_id_1>b").count(size + 1) == 1
    assert tok.ids_to_text(tok.text_to_ids(SAMPLES[1])) == SAMPLES[1]
    reloaded = load_tokenizer_from_dir(tok.save(str(tmp_path / "saved")))
    assert require_tokens(reloaded) == ids


# ---------------------------------------- huggingface
def test_hf_ids_and_chat_template(hf_dir):
    tok = load_tokenizer("huggingface", hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3) and tok.has_pad_token
    assert require_tokens(tok) == {"<extra_id_0>": 4, "<extra_id_1>": 5, "<extra_id_2>": 6}
    assert tok.chat_template == STEERLM_CHAT_TEMPLATE


def test_hf_without_pad_falls_back_to_eos_and_ignores_post_processor(tmp_path, corpus):
    from tokenizers import Tokenizer, processors

    out = train_hf_bpe(
        corpus, str(tmp_path), 400, special_tokens=("<s>", "</s>"), pad_token=None, unk_token=None
    )
    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))  # Llama-style: the file itself adds bos
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    raw.save(os.path.join(out, "tokenizer.json"))
    tok = load_tokenizer("hf", os.path.join(out, "tokenizer.json"))
    assert not tok.has_pad_token and tok.pad_id == tok.eos_id == 1
    assert tok.text_to_ids("the cat")[0] != 0 and tok.text_to_ids("the cat", add_bos=True)[0] == 0
    with pytest.raises(TokenizerError, match="no single-id token for <extra_id_0>"):
        require_tokens(tok)
    ids = require_tokens(tok, add_missing=True)
    assert tok.text_to_ids("x<extra_id_2>y").count(ids["<extra_id_2>"]) == 1
    reloaded = load_tokenizer_from_dir(tok.save(str(tmp_path / "saved")))
    assert require_tokens(reloaded) == ids and reloaded.pad_id == 1


def test_hf_side_files_in_transformers4_format(hf_dir, tmp_path):
    shutil.copy(os.path.join(hf_dir, "tokenizer.json"), tmp_path / "tokenizer.json")
    bos = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False}
    templates = [{"name": "default", "template": "DEFAULT"}, {"name": "tool_use", "template": "TOOLS"}]
    config = {"bos_token": bos, "eos_token": "</s>", "chat_template": templates, "model_max_length": 4096}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": "<pad>", "eos_token": "<unk>"})
    )
    tok = load_tokenizer_from_dir(str(tmp_path))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, 3, None)  # the config wins over the map
    assert tok.chat_template == "DEFAULT"
    saved = tmp_path / "saved"
    tok.save(str(saved))
    written = json.loads((saved / "tokenizer_config.json").read_text())
    assert written["model_max_length"] == 4096 and written["pad_token"] == "<pad>"
    assert (
        written["chat_template"] == templates
        and load_tokenizer_from_dir(str(saved)).chat_template == "DEFAULT"
    )


def test_transformers_directory_loads_and_matches_transformers(hf_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json")),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = STEERLM_CHAT_TEMPLATE
    fast.save_pretrained(str(tmp_path / "hf_saved"))
    ours = load_tokenizer_from_dir(str(tmp_path / "hf_saved"))
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (
        fast.bos_token_id,
        fast.eos_token_id,
        fast.pad_token_id,
        fast.unk_token_id,
    )
    assert ours.chat_template == STEERLM_CHAT_TEMPLATE
    for text in SAMPLES:
        assert ours.text_to_ids(text) == fast(text, add_special_tokens=False)["input_ids"]
    # ...and what we save, transformers reads back with the same ids and special tokens.
    again = transformers.AutoTokenizer.from_pretrained(ours.save(str(tmp_path / "ours_saved")))
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (
        ours.bos_id,
        ours.eos_id,
        ours.pad_id,
    )
    assert [again(t, add_special_tokens=False)["input_ids"] for t in SAMPLES] == ours.texts_to_ids(SAMPLES)


# ---------------------------------------- errors for users
def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_errors_are_one_line_and_name_the_file(tmp_path, sp_dir, hf_dir):
    with pytest.raises(TokenizerError, match="unknown tokenizer library 'tiktoken'") as err:
        load_tokenizer("tiktoken", sp_dir)
    assert sp_dir in _one_line(err)
    missing = str(tmp_path / "nope" / "tokenizer.model")
    with pytest.raises(TokenizerError, match="not found") as err:
        load_tokenizer("sentencepiece", missing)
    assert missing in _one_line(err)
    with pytest.raises(TokenizerError, match="no tokenizer found") as err:
        load_tokenizer_from_dir(str(tmp_path))
    _one_line(err)

    (tmp_path / "bad_sp").mkdir()
    (tmp_path / "bad_sp" / "tokenizer.model").write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(TokenizerError, match="not a readable sentencepiece model") as err:
        load_tokenizer_from_dir(str(tmp_path / "bad_sp"))
    assert "bad_sp/tokenizer.model" in _one_line(err)

    (tmp_path / "bad_hf").mkdir()
    (tmp_path / "bad_hf" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable HF tokenizer.json") as err:
        load_tokenizer("huggingface", str(tmp_path / "bad_hf"))
    assert "bad_hf/tokenizer.json" in _one_line(err)

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(hf_dir, "tokenizer.json"), bare / "tokenizer.json")
    with pytest.raises(TokenizerError, match="no eos token named") as err:
        load_tokenizer_from_dir(str(bare))
    _one_line(err)
    assert load_tokenizer_from_dir(str(bare), eos_token="</s>").eos_id == 2
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    with pytest.raises(TokenizerError, match="eos_token '<\\|endoftext\\|>' is not in the vocabulary") as err:
        load_tokenizer_from_dir(str(bare))
    assert "tokenizer_config.json" in _one_line(err)

    (bare / METADATA_FILE).write_text(json.dumps({"library": "tiktoken"}))
    with pytest.raises(TokenizerError, match="unknown tokenizer library") as err:
        detect_library(str(bare))
    assert METADATA_FILE in _one_line(err)


def test_load_line_is_logged_once_per_tokenizer(sp_dir, hf_dir, tmp_path, caplog):
    """Every stage of a run loads its checkpoint's copy of one tokenizer: the load line is said once."""
    import logging

    from megatron_align.tokenizers import loading

    loading._announced.clear()
    copy = tmp_path / "stage2_tokenizer"
    shutil.copytree(sp_dir, copy)
    with caplog.at_level(logging.INFO, logger="megatron_align.tokenizers.loading"):
        first = load_tokenizer("sentencepiece", os.path.join(sp_dir, "tokenizer.model"))  # by file
        load_tokenizer_from_dir(str(copy))
        first.save(str(tmp_path / "checkpoint_tokenizer"))  # as a checkpoint holds it, with metadata
        load_tokenizer_from_dir(str(tmp_path / "checkpoint_tokenizer"))
        load_tokenizer_from_dir(hf_dir)  # another tokenizer: its own line
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 2 and "SentencePieceTokenizer" in lines[0] and "HFTokenizer" in lines[1], lines
