"""``SamplingParams``: the one set of sampling settings and defaults every stage embeds (torch-free).

The names are NeMo's (``inference.*`` of ``megatron_gpt_eval.py``, the ``PUT /generate`` fields,
NeMo-Aligner's ``sampling_params`` / ``length_params``: ``tokens_to_generate`` is
``length_params.max_length``, ``min_tokens_to_generate`` is ``length_params.min_length``). A stage's section
embeds them by subclassing (``inference.tokens_to_generate``, ``sample.tokens_to_generate``), so each key has
one default and one doc line everywhere; the HTTP request schema takes its defaults from here too.

The defaults sample from the model's own distribution (temperature 1, no top-k / top-p / repetition penalty),
as alignment stages need (their log-probs are then those of the policy), and stop at eos. Chat stages add
their template's end-of-turn marker to ``end_strings`` themselves (SteerLM: ``<extra_id_1>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

MAX_SEED = 2**63 - 1
"""Largest ``random_seed`` (a torch generator seed)."""


@dataclass
class SamplingParams:
    """How responses are generated (NeMo's names)."""

    greedy: bool = False
    """Greedy decoding (argmax); otherwise sample with temperature / top_k / top_p."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: off)."""
    top_p: float = 0.0
    """Nucleus sampling: keep the most likely tokens whose probabilities add up to top_p (0 or 1: off)."""
    repetition_penalty: float = 1.0
    """Divide the logits of tokens already present by this (1.0: off)."""
    tokens_to_generate: int = 64
    """Maximum number of generated tokens per prompt (NeMo-Aligner: ``length_params.max_length``)."""
    min_tokens_to_generate: int = 0
    """Generate at least this many tokens before eos may end a sample (``length_params.min_length``)."""
    end_strings: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    """Stop a sample once its text ends with one of these (eos always stops it; ``<|endoftext|>`` means eos,
    so the default needs no tokenizer)."""
    add_BOS: bool = False
    """Put the bos token before each prompt."""
    random_seed: Optional[int] = None
    """Seed of the sampling (None: not seeded, the process's generator)."""
    compute_logprob: bool = False
    """Return the log-probability of each generated token (the server: of every token, prompt included)."""
    all_probs: bool = False
    """Server: also return the log-probabilities over the whole vocabulary at every position."""

    def validate(self) -> None:
        """Raise ValueError naming the field for out-of-range values."""
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature: must be > 0 (or set greedy=True)")
        if self.top_k < 0:
            raise ValueError("top_k: must be >= 0")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError("top_p: must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty: must be > 0")
        if self.tokens_to_generate < 0:
            raise ValueError("tokens_to_generate: must be >= 0")
        if not 0 <= self.min_tokens_to_generate <= max(self.tokens_to_generate, 0):
            raise ValueError("min_tokens_to_generate: must be in [0, tokens_to_generate]")
        if self.random_seed is not None and not 0 <= self.random_seed <= MAX_SEED:
            raise ValueError(f"random_seed: must be in [0, {MAX_SEED}]")

    def sampling(self) -> SamplingParams:
        """Just the sampling settings of a section that embeds them (a plain ``SamplingParams``)."""
        return SamplingParams(**{name: getattr(self, name) for name in SAMPLING_KEYS})


SAMPLING_KEYS = tuple(SamplingParams.__dataclass_fields__)
"""The field names, in declaration order."""
