"""Checks that a loaded config describes a layout and a model that can exist; each failure names key and fix.

``validate_layout`` runs inside ``load_config`` (before any process group or tensor exists), so an impossible
combination stops a job at once with one line instead of a hang or an assertion deep inside megatron.
``check_batch_sizes`` is the shared check stages use for their global / micro batch sizes.
"""

from __future__ import annotations

from typing import Any

from megatron_align.config.errors import ConfigError
from megatron_align.config.schema import PRECISIONS, normalize_precision

NORMALIZATIONS = ("rmsnorm", "layernorm")
"""Allowed ``model.normalization`` values."""
ACTIVATIONS = ("fast-swiglu", "swiglu", "gelu", "gelu-tanh", "relu", "squared-relu")
"""Allowed ``model.activation`` values."""
POSITION_EMBEDDING_TYPES = ("rope", "learned_absolute")
"""Allowed ``model.position_embedding_type`` values."""


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {'|'.join(allowed)}: set {key} to one of them",
                          key=key)


def _at_least_one(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value} must be at least 1", key=key)


def _number_in(key: str, value: Any, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> None:
    """``value`` is a finite number within [low, high] (open ends where asked), else one line naming key."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        rule = " and ".join(x for x in (lo, hi) if x)
        raise ConfigError(f"{key}={value!r} must be a finite number {rule}".rstrip(), key=key)


def _check_optim(optim: Any) -> None:
    """Learning rates, Adam's betas and eps, weight decay: finite and in range (no traceback mid-step)."""
    _number_in("model.optim.lr", optim.lr, low=0.0)
    _number_in("model.optim.weight_decay", optim.weight_decay, low=0.0)
    _number_in("model.optim.eps", optim.eps, low=0.0, low_open=True)
    betas = list(optim.betas) if isinstance(optim.betas, (list, tuple)) else optim.betas
    if not isinstance(betas, list) or len(betas) != 2:
        raise ConfigError(f"model.optim.betas={optim.betas!r} must be two numbers, e.g. [0.9, 0.98]",
                          key="model.optim.betas")
    for i, beta in enumerate(betas):
        _number_in(f"model.optim.betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
    sched = getattr(optim, "sched", None)
    if sched is not None:
        _number_in("model.optim.sched.min_lr", sched.min_lr, low=0.0)


def validate_layout(cfg: Any, world_size: int | None = None) -> int:
    """Raise ``ConfigError`` for an impossible parallel layout or architecture; return the world size used.

    ``cfg`` has ``trainer`` and ``model`` sections (any ``RunConfig``). ``world_size`` defaults to
    ``trainer.num_nodes * trainer.devices``.
    """
    trainer, m = cfg.trainer, cfg.model
    _at_least_one("trainer.num_nodes", trainer.num_nodes)
    _at_least_one("trainer.devices", trainer.devices)
    precision = normalize_precision(trainer.precision)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={trainer.precision!r} is not one of {'|'.join(PRECISIONS)} "
            "(also accepted: bf16-mixed, 16-mixed)", key="trainer.precision")

    if getattr(m, "optim", None) is not None:
        _check_optim(m.optim)
    for name, section in vars(trainer).items():  # trainer.sft / trainer.rm / ...: the gradient clip
        clip = getattr(section, "gradient_clip_val", None)
        if clip is not None:
            _number_in(f"trainer.{name}.gradient_clip_val", clip, low=0.0)
    tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
    _at_least_one("model.tensor_model_parallel_size", tp)
    _at_least_one("model.pipeline_model_parallel_size", pp)
    _at_least_one("model.num_layers", m.num_layers)
    _at_least_one("model.num_attention_heads", m.num_attention_heads)
    ws = world_size if world_size is not None else trainer.num_nodes * trainer.devices
    if ws % (tp * pp):
        origin = "launched processes" if world_size is not None else "trainer.num_nodes * trainer.devices"
        raise ConfigError(
            f"model.tensor_model_parallel_size * model.pipeline_model_parallel_size = {tp}*{pp} = {tp * pp} "
            f"does not divide the world size {ws} ({origin}): change TP/PP or the number of devices",
            key="model.tensor_model_parallel_size")
    if pp > m.num_layers:
        raise ConfigError(
            f"model.pipeline_model_parallel_size={pp} is more than model.num_layers={m.num_layers}: "
            "use at most one pipeline stage per layer", key="model.pipeline_model_parallel_size")
    if m.activations_checkpoint_granularity is not None:
        _one_of("model.activations_checkpoint_granularity", m.activations_checkpoint_granularity,
                ("selective", "full"))
        if m.activations_checkpoint_granularity == "full":
            _one_of("model.activations_checkpoint_method", m.activations_checkpoint_method,
                    ("uniform", "block"))
    if m.sequence_parallel and tp == 1:
        raise ConfigError(
            "model.sequence_parallel=True needs model.tensor_model_parallel_size > 1: set "
            "model.sequence_parallel=False or raise TP", key="model.sequence_parallel")
    if m.sequence_parallel:
        _check_sequence_split(getattr(m, "data", None), tp)

    heads = m.num_attention_heads
    if heads % tp:
        raise ConfigError(
            f"model.num_attention_heads={heads} is not divisible by model.tensor_model_parallel_size={tp}: "
            "choose a TP that divides the head count", key="model.tensor_model_parallel_size")
    groups = m.num_query_groups if m.num_query_groups is not None else heads
    _at_least_one("model.num_query_groups", groups)
    if heads % groups:
        raise ConfigError(
            f"model.num_attention_heads={heads} is not divisible by model.num_query_groups={groups}: each "
            "key/value head must serve a whole number of query heads", key="model.num_query_groups")
    if groups % tp:
        raise ConfigError(
            f"model.num_query_groups={groups} is not divisible by model.tensor_model_parallel_size={tp}: "
            "choose a TP that divides the number of key/value heads", key="model.tensor_model_parallel_size")
    if m.kv_channels is None and m.hidden_size % heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads={heads}: set "
            "model.kv_channels (the head dimension) or change the head count", key="model.hidden_size")
    if m.vocab_size is not None:
        padded = m.padded_vocab_size()
        if padded % tp:
            raise ConfigError(
                f"the padded vocabulary ({padded} rows, model.vocab_size={m.vocab_size} rounded up to "
                f"model.make_vocab_size_divisible_by={m.make_vocab_size_divisible_by}) is not divisible by "
                f"model.tensor_model_parallel_size={tp}: set make_vocab_size_divisible_by to a multiple "
                f"of {tp}",
                key="model.make_vocab_size_divisible_by")

    _one_of("model.normalization", m.normalization, NORMALIZATIONS)
    _one_of("model.activation", m.activation, ACTIVATIONS)
    _one_of("model.position_embedding_type", m.position_embedding_type, POSITION_EMBEDDING_TYPES)
    if m.position_embedding_type == "learned_absolute" and m.encoder_seq_length > m.max_position_embeddings:
        raise ConfigError(
            f"model.encoder_seq_length={m.encoder_seq_length} is longer than model.max_position_embeddings="
            f"{m.max_position_embeddings} (the learned position table): shorten the sequence or enlarge "
            "the table",
            key="model.encoder_seq_length")
    return ws


def check_launch_matches(cfg: Any, launched_world_size: int) -> None:
    """A job started by torchrun/srun must have as many processes as
    ``trainer.num_nodes * trainer.devices``."""
    trainer = cfg.trainer
    requested = trainer.num_nodes * trainer.devices
    if launched_world_size == 1 and requested > 1:
        raise ConfigError(
            f"trainer.num_nodes * trainer.devices = {requested} but this is a single process: start it with "
            f"torchrun --nproc_per_node {trainer.devices} (or srun), or set trainer.devices=1",
            key="trainer.devices")
    if launched_world_size > 1 and launched_world_size != requested:
        raise ConfigError(
            f"trainer.num_nodes * trainer.devices = {trainer.num_nodes}*{trainer.devices} = {requested} "
            f"but the launcher started {launched_world_size} processes: set "
            f"trainer.devices={max(1, launched_world_size // trainer.num_nodes)} (or launch that many)",
            key="trainer.devices")


def check_batch_sizes(global_batch_size: int, micro_batch_size: int, data_parallel_size: int,
                      prefix: str = "model") -> int:
    """Raise ``ConfigError`` unless ``micro_batch_size * data_parallel_size`` divides the global batch.

    ``prefix`` is where the stage keeps the two keys (``model``, ``model.data.train_ds``, ...). Returns the
    number of gradient-accumulation micro-batches per step.
    """
    gbs, mbs = f"{prefix}.global_batch_size", f"{prefix}.micro_batch_size"
    _at_least_one(gbs, global_batch_size)
    _at_least_one(mbs, micro_batch_size)
    per_step = micro_batch_size * data_parallel_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"{gbs}={global_batch_size} is not divisible by {mbs} * data-parallel size = {micro_batch_size}*"
            f"{data_parallel_size} = {per_step}: make {gbs} a multiple of {per_step}", key=gbs)
    return global_batch_size // per_step


def _check_sequence_split(data: Any, tp: int) -> None:
    """Under sequence parallelism every padded row is split into TP equal parts along the sequence, so the
    lengths rows are padded to (``pad_seq_length_to_mult``, and ``max_seq_length`` for fixed-length rows)
    must be multiples of TP; megatron would otherwise fail mid-forward on the first dimension's split."""
    for split in ("train_ds", "validation_ds"):
        ds = getattr(data, split, None)
        for name in ("pad_seq_length_to_mult", "max_seq_length"):
            value = getattr(ds, name, None)
            if isinstance(value, int) and value % tp:
                key = f"model.data.{split}.{name}"
                raise ConfigError(
                    f"{key}={value} is not a multiple of model.tensor_model_parallel_size={tp}: with "
                    "model.sequence_parallel=True each row is split into TP equal sequence parts", key=key)
