"""Tokenizers: one ``AlignTokenizer`` interface over sentencepiece models and HF ``tokenizer.json``.

``load_tokenizer(library, path)`` / ``load_tokenizer_from_dir(directory)`` build one; ``require_tokens``
checks (or adds) the SteerLM ``<extra_id_0..2>`` markers; ``train_sentencepiece`` / ``train_hf_bpe`` make tiny
ones for tests and the CPU demo. Conventions (bos/eos only on request, pad falls back to eos) are in ``base``.
"""

from megatron_align.tokenizers.base import (
    EXTRA_ID_TOKENS,
    METADATA_FILE,
    AlignTokenizer,
    TokenizerError,
    require_tokens,
)
from megatron_align.tokenizers.hf_tokenizer import HFTokenizer
from megatron_align.tokenizers.loading import detect_library, load_tokenizer, load_tokenizer_from_dir
from megatron_align.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from megatron_align.tokenizers.training import STEERLM_CHAT_TEMPLATE, train_hf_bpe, train_sentencepiece

__all__ = [
    "EXTRA_ID_TOKENS",
    "METADATA_FILE",
    "STEERLM_CHAT_TEMPLATE",
    "AlignTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TokenizerError",
    "detect_library",
    "load_tokenizer",
    "load_tokenizer_from_dir",
    "require_tokens",
    "train_hf_bpe",
    "train_sentencepiece",
]
