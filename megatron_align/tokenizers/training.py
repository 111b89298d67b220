"""Training tiny tokenizers from text, for tests and the CPU demo (nothing is ever downloaded).

``train_sentencepiece`` writes a Llama-2-style ``tokenizer.model``: BPE (or unigram), identity normalization,
digits split, byte fallback, and fixed special ids:

    unk = 0 ``<unk>``, bos = 1 ``<s>``, eos = 2 ``</s>``, pad = -1 (none: ``pad_id`` falls back to eos)
    or, with ``with_pad=True``, pad = 3 ``<pad>``; user-defined symbols (``<extra_id_0..2>``) follow.

``train_hf_bpe`` writes an HF directory (``tokenizer.json`` + ``tokenizer_config.json`` +
``special_tokens_map.json``) for a byte-level BPE, GPT-2 style, with a SteerLM-format chat template.
Both are deterministic: one thread and a fixed seed for sentencepiece; the HF BPE trainer has no randomness.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatron_align.tokenizers import hf_config
from megatron_align.tokenizers.base import EXTRA_ID_TOKENS, TokenizerError
from megatron_align.tokenizers.hf_tokenizer import TOKENIZER_FILE
from megatron_align.tokenizers.sentencepiece_tokenizer import MODEL_FILE

logger = logging.getLogger(__name__)

STEERLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<extra_id_0>System\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<extra_id_1>User\n{{ message['content'] }}\n"
    "{% else %}<extra_id_1>Assistant\n{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<extra_id_1>Assistant\n{% endif %}"
)
"""NeMo SteerLM turns (``<extra_id_0>System``, ``<extra_id_1>User``, ``<extra_id_1>Assistant``) as Jinja."""

HF_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>") + EXTRA_ID_TOKENS


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str,
    vocab_size: int,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = EXTRA_ID_TOKENS,
    byte_fallback: bool = True,
    with_pad: bool = False,
    seed: int = 1234,
) -> str:
    """Train a sentencepiece model on ``texts``; writes ``out_dir/tokenizer.model`` and returns its path.

    ``vocab_size`` is an upper bound (a tiny corpus may give fewer pieces rather than failing).
    """
    if model_type not in ("bpe", "unigram"):
        raise TokenizerError(f"{out_dir}: model_type must be 'bpe' or 'unigram', got {model_type!r}")
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, os.path.splitext(MODEL_FILE)[0])
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t for t in texts if t),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            user_defined_symbols=list(user_defined_symbols),
            byte_fallback=byte_fallback,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3 if with_pad else -1,
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            pad_piece="<pad>",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=1.0,
            hard_vocab_limit=False,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise TokenizerError(
            f"{out_dir}: sentencepiece training failed ({str(exc).splitlines()[0]})"
        ) from None
    logger.info("trained sentencepiece %s model (vocab <= %d) at %s", model_type, vocab_size, prefix)
    return prefix + ".model"


def train_hf_bpe(
    texts: Iterable[str],
    out_dir: str,
    vocab_size: int,
    special_tokens: Sequence[str] = HF_SPECIAL_TOKENS,
    bos_token: str | None = "<s>",
    eos_token: str = "</s>",
    pad_token: str | None = "<pad>",
    unk_token: str | None = "<unk>",
    chat_template: str | None = STEERLM_CHAT_TEMPLATE,
) -> str:
    """Train a byte-level BPE on ``texts``; writes an HF tokenizer directory at ``out_dir`` and returns it.

    ``special_tokens`` get the first ids, in order; the named bos/eos/pad/unk must be among them (None:
    the tokenizer has no such token).
    """
    named = {"bos": bos_token, "eos": eos_token, "pad": pad_token, "unk": unk_token}
    named = {role: text for role, text in named.items() if text is not None}
    absent = [text for text in named.values() if text not in special_tokens]
    if absent:
        raise TokenizerError(f"{out_dir}: {absent} must also be listed in special_tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, TOKENIZER_FILE))
    extra = [t for t in special_tokens if t not in named.values()]
    hf_config.write_side_config(out_dir, named, extra, chat_template, raw_config={})
    logger.info("trained byte-level BPE (vocab %d) at %s", tok.get_vocab_size(), out_dir)
    return out_dir
