"""The model section of every config: architecture, parallel layout, tokenizer, reward head.

Key names follow NeMo / NeMo-Aligner model configs (``model.num_layers``, ``model.hidden_size``,
``model.tensor_model_parallel_size``, ...), so that command lines from the seed documents keep working.
This file owns the defaults; megatron's ``TransformerConfig`` is derived from it once, in
``megatron_align.models.gpt.transformer_config_from``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TokenizerConfig:
    """Which tokenizer the model uses (``model.tokenizer.*``)."""

    library: str = "sentencepiece"
    """``sentencepiece`` (a ``tokenizer.model`` file) or ``huggingface`` (a ``tokenizer.json`` or HF
    directory)."""
    model: Optional[str] = None
    """Path to the tokenizer file or directory; filled from the checkpoint when restoring one."""
    type: Optional[str] = None
    """Kept for NeMo compatibility (NeMo writes the HF model name here); unused otherwise."""


@dataclass
class OptimSchedConfig:
    """Learning-rate schedule (``model.optim.sched.*``)."""

    name: str = "CosineAnnealing"
    """``CosineAnnealing`` or ``Constant``."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to ``lr``."""
    constant_steps: int = 0
    """Steps held at ``lr`` after warm-up, before annealing starts."""
    min_lr: float = 0.0
    """Floor of the cosine annealing."""
    max_steps: Optional[int] = None
    """Total scheduled steps; defaults to the stage's ``max_steps``."""


@dataclass
class OptimConfig:
    """Optimizer (``model.optim.*``); built with megatron's ``get_megatron_optimizer``."""

    name: str = "distributed_fused_adam"
    """``distributed_fused_adam`` (megatron distributed optimizer, Adam), ``fused_adam`` / ``adamw``
    (Adam without sharded state), or ``sgd``."""
    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    momentum: float = 0.0
    """SGD momentum."""
    sched: OptimSchedConfig = field(default_factory=OptimSchedConfig,
                                    metadata={"on_delete": lambda: OptimSchedConfig(name="Constant",
                                                                                    warmup_steps=0)})
    """Learning-rate schedule; ``~model.optim.sched`` (NeMo: no scheduler) is a constant ``lr``."""


@dataclass
class ModelConfig:
    """``model.*``: a megatron-core GPT model (Llama family or GPT-2 family) and how it is laid out."""

    # ---- parallel layout ----
    tensor_model_parallel_size: int = 1
    """Tensor-parallel ranks per model replica (TP)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages per model replica (PP); must not exceed ``num_layers``."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs TP > 1)."""

    # ---- where the weights come from ----
    restore_from_path: Optional[str] = None
    """A megatron_align checkpoint directory to start from (``megatron-align convert`` makes one from HF)."""

    # ---- architecture ----
    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: int = 256
    """MLP inner width (per branch for SwiGLU)."""
    num_attention_heads: int = 4
    """Query heads; must be divisible by TP."""
    num_query_groups: Optional[int] = None
    """Key/value heads for grouped-query attention; ``None`` means as many as query heads (MHA)."""
    kv_channels: Optional[int] = None
    """Head dimension; ``None`` means ``hidden_size // num_attention_heads``."""
    encoder_seq_length: int = 512
    """Training sequence length."""
    max_position_embeddings: int = 512
    """Positions the model supports (size of the learned table for GPT-2)."""
    normalization: str = "rmsnorm"
    """``rmsnorm`` (Llama) or ``layernorm`` (GPT-2)."""
    layernorm_epsilon: float = 1e-5
    """Epsilon of the norm layers."""
    activation: str = "fast-swiglu"
    """``fast-swiglu`` / ``swiglu`` (Llama), ``gelu`` (erf), ``gelu-tanh`` (GPT-2's ``gelu_new``)."""
    position_embedding_type: str = "rope"
    """``rope`` (Llama) or ``learned_absolute`` (GPT-2)."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    rotary_percent: float = 1.0
    """Fraction of the head dimension that RoPE rotates."""
    bias: bool = False
    """Biases on every linear layer (GPT-2)."""
    qkv_bias: bool = False
    """Biases on the query/key/value projection only (Qwen2)."""
    share_embeddings_and_output_weights: bool = False
    """Tie the output layer to the input embedding."""
    vocab_size: Optional[int] = None
    """Tokenizer vocabulary size; ``None`` means read it from the tokenizer."""
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of this (independent of TP, so checkpoints reshard)."""
    init_method_std: float = 0.02
    """Standard deviation of the random initialisation."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    apply_query_key_layer_scaling: bool = False
    """Megatron's extra query-key scaling (fp16 stability); off for HF parity."""
    seed: int = 1234
    """Seed of the weight initialisation and of dropout."""

    # ---- memory / precision options from NeMo command lines ----
    megatron_amp_O2: bool = True
    """Accepted for NeMo command lines; always on here: bf16/fp16 parameters with fp32 master weights in the
    optimizer."""
    activations_checkpoint_granularity: Optional[str] = None
    """Activation recomputation: ``selective`` (core attention only), ``full`` or ``null`` (off)."""
    activations_checkpoint_method: Optional[str] = None
    """With ``full``: ``uniform`` or ``block`` (megatron's recompute_method)."""
    activations_checkpoint_num_layers: Optional[int] = None
    """With ``full``: layers per recomputed chunk (uniform) or recomputed layers per stage (block)."""

    # ---- batch sizes (NeMo keeps them in the model section) ----
    micro_batch_size: int = 1
    """Sequences per forward pass on one data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks (micro x accumulation x DP)."""

    # ---- reward head (reward models only) ----
    num_attributes: int = 1
    """Outputs of the reward head: 9 for SteerLM's regression model, 1 for Bradley-Terry."""

    # ---- sub-sections ----
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    data: dict = field(default_factory=dict)
    """Data section (``model.data.*``); its schema belongs to each stage."""

    def padded_vocab_size(self, vocab_size: Optional[int] = None) -> int:
        """Embedding rows: the vocabulary rounded up to ``make_vocab_size_divisible_by``."""
        v = vocab_size if vocab_size is not None else self.vocab_size
        if v is None:
            raise ValueError("model.vocab_size is unknown: set it or give a tokenizer")
        m = max(1, self.make_vocab_size_divisible_by)
        return ((v + m - 1) // m) * m

    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def query_groups(self) -> int:
        """Key/value heads (equals query heads without GQA)."""
        return self.num_query_groups or self.num_attention_heads

    def context_length(self) -> int:
        """Longest sequence (prompt + generated tokens, or a training row) the model takes: the training
        length, capped by the position table."""
        return min(self.encoder_seq_length, self.max_position_embeddings)
