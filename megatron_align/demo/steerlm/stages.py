"""The configs of the SteerLM demo's training stages, each built the way a user would run the stage alone:
the stage's ``conf/*.yaml`` plus command-line overrides (``load_config``), so the demo runs the real
``run_sft`` / ``run_reward_model`` with validated configs.

* base model: ``conf/gpt_sft.yaml``, the demo's architecture and tokenizer, unlabelled chats;
* reward model (step 1): ``conf/training_rm.yaml``, 9-attribute regression from the base model;
* attribute-conditioned SFT (step 3) and the bootstrap's fine-tuning (step 4): the bootstrap's
  ``sft_config`` (``conf/gpt_sft.yaml`` + the seed's AC-SFT settings), from a checkpoint.

Layout (TP/PP, devices, precision), batch sizes and the shared optimizer come from the demo's ``trainer`` /
``model`` sections; steps and learning rates from the stage's own section.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from megatron_align.config import ModelConfig, load_config
from megatron_align.config.stages.steerlm import SFT_CONF, sft_config, yaml_quote

RM_CONF = SFT_CONF.parent / "training_rm.yaml"
"""The reward-model stage's defaults (``examples/nlp/gpt/train_reward_model.py`` reads the same file)."""
_NOT_ARCHITECTURE = {"tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
                     "restore_from_path", "micro_batch_size", "global_batch_size", "num_attributes",
                     "tokenizer", "optim", "data", "vocab_size"}


def _value(v) -> str:
    """A Python value as an override value (YAML)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return yaml_quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return repr(v)


def common(cfg, run_dir: Path) -> list[str]:
    """Layout, precision and run-directory settings every stage shares."""
    t, m = cfg.trainer, cfg.model
    return [f"trainer.num_nodes={t.num_nodes}", f"trainer.devices={t.devices}",
            f"trainer.precision={_value(str(t.precision))}",
            f"model.tensor_model_parallel_size={m.tensor_model_parallel_size}",
            f"model.pipeline_model_parallel_size={m.pipeline_model_parallel_size}",
            f"model.sequence_parallel={_value(m.sequence_parallel)}", f"model.seed={m.seed}",
            f"exp_manager.explicit_log_dir={_value(str(run_dir))}", "exp_manager.resume_if_exists=false",
            "exp_manager.create_tensorboard_logger=false",
            "exp_manager.checkpoint_callback_params.save_top_k=1"]


def architecture(cfg) -> list[str]:
    """``model.<field>=<value>`` for every architecture field of the demo's model section."""
    return [f"model.{f.name}={_value(getattr(cfg.model, f.name))}" for f in dataclasses.fields(ModelConfig)
            if f.name not in _NOT_ARCHITECTURE]


def optimizer(cfg, stage) -> list[str]:
    """The shared ``model.optim`` with the stage's learning rates and warm-up."""
    o = cfg.model.optim
    return [f"model.optim.name={_value(o.name)}", f"model.optim.lr={stage.lr!r}",
            f"model.optim.weight_decay={o.weight_decay!r}", f"model.optim.betas={_value(list(o.betas))}",
            f"model.optim.eps={o.eps!r}", f"model.optim.sched.name={_value(o.sched.name)}",
            f"model.optim.sched.warmup_steps={stage.warmup_steps}", "model.optim.sched.constant_steps=0",
            f"model.optim.sched.min_lr={stage.min_lr!r}"]


def _sft_loop(stage) -> list[str]:
    return [f"trainer.sft.max_steps={stage.max_steps}", "trainer.sft.max_epochs=1000",
            f"trainer.sft.val_check_interval={stage.val_check_interval}",
            f"trainer.sft.save_interval={stage.max_steps}", "trainer.sft.limit_val_batches=1.0"]


def _sft_data(cfg, val_file) -> list[str]:
    """The SFT data keys; rows are fixed-length (``pad_to_max_length``), as when the demo's table was
    recorded (dynamic padding changes the float sums' order, and with them the sampled text)."""
    m = cfg.model
    seq = m.encoder_seq_length
    out = ["model.data.chat=true"]
    for split in ("train_ds", "validation_ds"):
        out += [f"model.data.{split}.max_seq_length={seq}", f"model.data.{split}.micro_batch_size="
                f"{m.micro_batch_size}", f"model.data.{split}.global_batch_size={m.global_batch_size}",
                f"model.data.{split}.add_eos=false", f"model.data.{split}.pad_to_max_length=true"]
    return out + [f"model.data.validation_ds.file_path={_value(str(val_file))}"]


def base_model_config(cfg, train_file, val_file, tokenizer_model, run_dir: Path):
    """The base language model: SFT from scratch on unlabelled chats."""
    from megatron_align.config.stages.sft import SFTConfig

    s = cfg.base_model
    overrides = [*common(cfg, run_dir), *architecture(cfg), *optimizer(cfg, s), *_sft_loop(s),
                 *_sft_data(cfg, val_file), f"model.data.train_ds.file_path={_value(str(train_file))}",
                 "model.tokenizer.library=sentencepiece",
                 f"model.tokenizer.model={_value(str(tokenizer_model))}",
                 f"model.answer_only_loss={_value(s.answer_only_loss)}"]
    return load_config(SFTConfig, SFT_CONF, overrides)


def reward_model_config(cfg, train_file, val_file, base_checkpoint, run_dir: Path):
    """Step 1: the 9-attribute regression reward model, trunk from the base model, fresh head."""
    from megatron_align.config.stages.reward_model import RMConfig

    s, m = cfg.reward_model, cfg.model
    prefix = (f"{{train: [{_value(str(train_file))}], validation: [{_value(str(val_file))}], "
              f"test: [{_value(str(val_file))}]}}")
    overrides = [*common(cfg, run_dir), *optimizer(cfg, s),
                 f"pretrained_checkpoint.restore_from_path={_value(str(base_checkpoint))}",
                 "model.reward_model_type=regression", "model.regression.num_attributes=9",
                 "model.regression.loss_func=regression", f"model.data.data_prefix={prefix}",
                 f"model.data.seq_length={m.encoder_seq_length}",
                 f"model.micro_batch_size={m.micro_batch_size}",
                 f"model.global_batch_size={m.global_batch_size}", f"trainer.rm.max_steps={s.max_steps}",
                 "trainer.rm.max_epochs=1000", f"trainer.rm.val_check_interval={s.val_check_interval}",
                 f"trainer.rm.save_interval={s.max_steps}", "trainer.rm.limit_val_batches=1.0"]
    return load_config(RMConfig, RM_CONF, overrides)


def finetune_config(cfg, stage, train_file, val_file, checkpoint, run_dir: Path):
    """Steps 3 and 4: attribute-conditioned SFT of ``checkpoint`` on labelled chats (the bootstrap's
    ``sft_config``: ``conf/gpt_sft.yaml`` + the seed's AC-SFT settings + these overrides)."""
    own = {"model.restore_from_path", "model.data.train_ds.file_path", "exp_manager.explicit_log_dir"}
    overrides = [o for o in common(cfg, run_dir) if o.split("=", 1)[0] not in own]
    overrides += [*optimizer(cfg, stage), *_sft_loop(stage), *_sft_data(cfg, val_file)]
    return sft_config(str(train_file), str(checkpoint), str(run_dir), overrides)
