"""Configs of SteerLM bootstrapping (``examples/nlp/gpt/steerlm/*.py``): one schema per step command and one
for the loop, read with the seed documents' ``key=value`` overrides (one-line errors, exit 2).

The fine-tuning step is the SFT stage itself: its settings are ``conf/gpt_sft.yaml`` keys given with the
prefix ``finetune.`` (``finetune.trainer.sft.max_steps=50 finetune.model.optim.lr=1e-6``), passed to
``load_config(SFTConfig, conf/gpt_sft.yaml, ...)`` after ``FINETUNE_DEFAULTS``; the start checkpoint, the
training file and the run directory are the step's own (``FINETUNE_OWNED``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from megatron_align.config.data import ChatPromptTokens
from megatron_align.config.errors import ConfigError
from megatron_align.config.loader import CONF_DIR
from megatron_align.config.sampling import SamplingParams

OASST_ATTRIBUTES: tuple[str, ...] = ("quality", "toxicity", "humor", "creativity")
"""The OpenAssistant labels SteerLM keeps (``spam``, ``helpfulness``, ``violence``... are dropped)."""
HELPSTEER_ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
"""The five HelpSteer / HelpSteer2 ratings."""
STEERLM_ATTRIBUTES: tuple[str, ...] = OASST_ATTRIBUTES + HELPSTEER_ATTRIBUTES
"""All nine, in label-string and regression-vector order."""
FINETUNE_PREFIX = "finetune."
"""Command-line keys with this prefix go to the SFT stage's config."""
FINETUNE_DEFAULTS = ("model.data.chat=True", "model.data.train_ds.add_eos=False",
                     "model.data.validation_ds.add_eos=False", "trainer.sft.max_epochs=1")
"""SFT settings of the seed's attribute-conditioned SFT command that the step sets before the user's."""
FINETUNE_OWNED = ("model.restore_from_path", "model.data.train_ds.file_path", "exp_manager.explicit_log_dir")
"""SFT keys the step sets itself (the policy checkpoint, the annotated file, the round's run directory)."""
SFT_CONF = CONF_DIR / "gpt_sft.yaml"
"""The SFT stage's defaults (``examples/nlp/gpt/train_gpt_sft.py`` reads the same file)."""


END_STRING = ChatPromptTokens().turn_start
"""The seed's ``end_strings``: the next turn's marker (``<extra_id_1>``) ends the answer
(attribute-conditioned SFT trains it)."""

@dataclass
class SampleSection(SamplingParams):
    """``sample.*``: how responses are drawn from the attribute-conditioned SFT model (the sampling keys:
    ``config/sampling.py``; the next-turn marker ``<extra_id_1>`` always ends an answer, besides
    ``end_strings``; round r of the bootstrap loop uses ``random_seed + r - 1`` when it is set)."""

    k: int = 4
    """Responses per prompt."""
    values: str = ""
    """Attribute values the responses are conditioned on (``humor:0,verbosity:2``); ``quality`` is always 4
    (maximum quality, the point of the step); unset attributes take the seed's values."""
    system: Optional[str] = None
    """System prompt for every prompt; None: each record's own (the SteerLM one when the record has none)."""
    url: Optional[str] = None
    """A running generation server (``http://host:port``) serving the policy, instead of loading it here."""
    max_batch_size: int = 8
    """In process: rows per generation batch."""
    precision: Optional[str] = None
    """In process: ``32`` or ``bf16`` (None: bf16 on GPU, 32 on CPU)."""


@dataclass
class AnnotateSection:
    """``annotate.*``: the regression reward model that labels the sampled responses."""

    url: Optional[str] = None
    """A running reward server (``examples/nlp/gpt/serve_reward_model.py``), ``http://host:port``."""
    rm_checkpoint: Optional[str] = None
    """Or a 9-attribute regression reward model checkpoint, loaded in this process."""
    batch_size: int = 64
    """Texts scored per request / per call."""
    micro_batch_size: int = 4
    """In process: sequences per reward-model forward."""
    precision: Optional[str] = None
    """In process: ``32`` or ``bf16`` (None: bf16 on GPU, 32 on CPU)."""
    add_eos: bool = False
    """Append eos to each text before scoring (as the reward model was trained)."""
    use_record_system: bool = False
    """Score with each record's system prompt instead of NeMo-Aligner's fixed one."""
    retries: int = 5
    """Server: retries of a failed request."""
    timeout: float = 300.0
    """Server: seconds to wait for one answer."""


@dataclass
class SampleStepConfig:
    """``examples/nlp/gpt/steerlm/sample.py``."""

    prompts: Optional[str] = None
    """JSONL (or parquet) of NeMo chat records; each is answered after its last User turn."""
    checkpoint: Optional[str] = None
    """The attribute-conditioned SFT checkpoint (or ``sample.url``)."""
    output: Optional[str] = None
    """The sampled chats (NeMo SFT JSONL, ``k`` records per prompt)."""
    sample: SampleSection = field(default_factory=SampleSection)
    """Sampling settings."""


@dataclass
class AnnotateStepConfig:
    """``examples/nlp/gpt/steerlm/annotate.py``."""

    input: Optional[str] = None
    """Chats to label (the sample step's output)."""
    output: Optional[str] = None
    """The labelled chats (resumed when present)."""
    annotate: AnnotateSection = field(default_factory=AnnotateSection)
    """Reward model settings."""


@dataclass
class FinetuneStepConfig:
    """``examples/nlp/gpt/steerlm/finetune.py`` (plus ``finetune.*`` SFT keys)."""

    input: Optional[str] = None
    """The labelled chats to train on."""
    checkpoint: Optional[str] = None
    """The checkpoint to start from (the attribute-conditioned SFT model)."""
    output_dir: Optional[str] = None
    """The SFT run directory (checkpoints under ``checkpoints/``; resumed when present)."""


@dataclass
class BootstrapConfig:
    """``examples/nlp/gpt/steerlm/bootstrap.py``: ``rounds`` x (sample, annotate, fine-tune)."""

    prompts: Optional[str] = None
    """JSONL of NeMo chat records whose user turns are the prompts (every round samples them)."""
    sft_checkpoint: Optional[str] = None
    """The attribute-conditioned SFT checkpoint round 1 samples from and fine-tunes."""
    output_dir: Optional[str] = None
    """Everything goes to ``output_dir/round_<r>/`` (samples.jsonl, annotated.jsonl, sft/)."""
    rounds: int = 1
    """Rounds; round r samples from and fine-tunes round r-1's checkpoint."""
    sample: SampleSection = field(default_factory=SampleSection)
    """Sampling settings."""
    annotate: AnnotateSection = field(default_factory=AnnotateSection)
    """Reward model settings."""


FINETUNE_HELP = ("finetune.<key>=value: any key of the SFT stage (python examples/nlp/gpt/train_gpt_sft.py "
                 "--help lists them),\napplied after conf/gpt_sft.yaml and the bootstrap's chat defaults "
                 "(finetune.model.optim.lr=5e-6).")
_OP = re.compile(r"^(\+\+|\+|~)?(.*)$", re.S)


def split_overrides(argv: list[str], prefix: str = FINETUNE_PREFIX) -> tuple[list[str], list[str]]:
    """``(own, finetune)``: the overrides of the step's schema, and the ``finetune.`` ones without the
    prefix (``++finetune.a=1`` -> ``++a=1``)."""
    own, sft = [], []
    for arg in argv:
        op, rest = _OP.match(arg).groups()
        if rest.startswith(prefix):
            sft.append((op or "") + rest[len(prefix):])
        else:
            own.append(arg)
    return own, sft


def yaml_quote(text: str) -> str:
    """``text`` as a single-quoted YAML scalar: read back verbatim by the override parser."""
    return "'" + str(text).replace("'", "''") + "'"


def require(cfg, *keys: str) -> None:
    """``ConfigError`` for the first of ``keys`` (attribute names of ``cfg``) that is not set."""
    for key in keys:
        if getattr(cfg, key) in (None, ""):
            raise ConfigError(f"{key} is not set", key=key)


def sft_config(train_file, checkpoint, run_dir, overrides: list[str]):
    """The SFT stage's config for fine-tuning ``checkpoint`` on ``train_file`` in ``run_dir``:
    conf/gpt_sft.yaml, ``FINETUNE_DEFAULTS``, the user's ``overrides`` (keys without ``finetune.``), then the
    step's own keys."""
    from megatron_align.config import load_config
    from megatron_align.config.overrides import parse_override
    from megatron_align.config.stages.sft import SFTConfig

    for text in overrides:
        key = parse_override(text).key
        if key in FINETUNE_OWNED:
            raise ConfigError(f"{FINETUNE_PREFIX}{key} is set by the bootstrap itself (the start checkpoint, "
                              "the annotated file, the round's run directory); leave it out", key=key)
    own = [f"model.restore_from_path={yaml_quote(checkpoint)}",
           f"model.data.train_ds.file_path={yaml_quote(train_file)}",
           f"exp_manager.explicit_log_dir={yaml_quote(run_dir)}"]
    conf = SFT_CONF if SFT_CONF.is_file() else None
    try:
        return load_config(SFTConfig, conf, [*FINETUNE_DEFAULTS, *overrides, *own])
    except ConfigError as err:  # name the key as the user typed it
        cli = "from the command line: "
        if err.source and err.source.startswith(cli) and err.source[len(cli):].lstrip("+~") in overrides:
            err.source = cli + FINETUNE_PREFIX + err.source[len(cli):]
        raise
