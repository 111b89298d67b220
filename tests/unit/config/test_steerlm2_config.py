"""config/stages/steerlm2: the seed's train_steerlm2.py command keys load (paths and sizes changed), chat is
the default, and each bad choice is one line naming its key; conf/train_steerlm2.yaml is generated."""

import dataclasses

import pytest

from megatron_align.config import ConfigError, load_config
from megatron_align.config.stages.steerlm2 import SteerLM2Config
from tests.helpers import ROOT

CONF = ROOT / "conf" / "train_steerlm2.yaml"
SEED = [  # seed 000's command, in its order, with sizes and paths shrunk
    "trainer.num_nodes=1", "trainer.devices=1", "trainer.precision=bf16", "trainer.sft.limit_val_batches=40",
    "trainer.sft.max_epochs=1", "trainer.sft.max_steps=800", "trainer.sft.val_check_interval=800",
    "trainer.sft.save_interval=800", "model.megatron_amp_O2=True", "model.tensor_model_parallel_size=1",
    "model.pipeline_model_parallel_size=1", "model.optim.lr=6e-6", "model.optim.name=distributed_fused_adam",
    "model.optim.weight_decay=0.01", "model.optim.sched.constant_steps=200",
    "model.optim.sched.warmup_steps=1", "model.optim.sched.min_lr=5e-6", "model.answer_only_loss=True",
    "model.activations_checkpoint_granularity=selective", "model.activations_checkpoint_method=uniform",
    "model.steerlm2.micro_batch_size=2", "model.steerlm2.forward_micro_batch_size=2", "model.data.chat=True",
    "model.data.num_workers=0", "model.data.chat_prompt_tokens.system_turn_start='<extra_id_0>'",
    "model.data.chat_prompt_tokens.turn_start='<extra_id_1>'",
    "model.data.chat_prompt_tokens.label_start='<extra_id_2>'", "model.data.train_ds.max_seq_length=4096",
    "model.data.train_ds.micro_batch_size=1", "model.data.train_ds.global_batch_size=128",
    "model.data.train_ds.file_path=data/oasst/train_labeled_2ep.jsonl",
    "model.data.train_ds.index_mapping_dir=/indexmap_dir", "model.data.train_ds.add_eos=False",
    "model.data.train_ds.hf_dataset=True", "model.data.validation_ds.max_seq_length=4096",
    "model.data.validation_ds.file_path=data/oasst/val_labeled.jsonl",
    "model.data.validation_ds.micro_batch_size=1", "model.data.validation_ds.global_batch_size=128",
    "model.data.validation_ds.index_mapping_dir=/indexmap_dir", "model.data.validation_ds.add_eos=False",
    "model.data.validation_ds.hf_dataset=True", "exp_manager.create_wandb_logger=True",
    "exp_manager.wandb_logger_kwargs.project=steerlm", "exp_manager.wandb_logger_kwargs.name=acsft_training",
    "exp_manager.explicit_log_dir=/results/acsft_70b",
    "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True",
]


def _cfg(extra=()):
    return load_config(SteerLM2Config, CONF, [*SEED, *extra], validate=False)


def test_seed_command_keys_load_and_validate():
    cfg = _cfg()
    s = cfg.model.steerlm2
    assert (s.micro_batch_size, s.forward_micro_batch_size, s.length_normalization) == (2, 2, "group_mean")
    assert cfg.model.data.chat and cfg.model.data.chat_prompt_tokens.label_start == "<extra_id_2>"
    assert cfg.model.data.train_ds.global_batch_size == 128 and cfg.trainer.sft.max_steps == 800
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, restore_from_path="/models/steerlm"))
    cfg.validate(1)
    assert SteerLM2Config().model.data.chat  # records are chats by default


@pytest.mark.parametrize("override, key", [
    ("model.steerlm2.micro_batch_size=0", "model.steerlm2.micro_batch_size"),
    ("model.steerlm2.length_normalization=tokens", "model.steerlm2.length_normalization"),
    ("model.steerlm2.overlong=truncate", "model.steerlm2.overlong"),
    ("model.answer_only_loss=False", "model.answer_only_loss"),
    ("model.data.chat=False", "model.data.chat"),
])
def test_bad_values_are_one_line(override, key):
    cfg = _cfg([override, "model.restore_from_path=/models/steerlm"])
    with pytest.raises(ConfigError) as e:
        cfg.validate(1)
    assert e.value.key == key and "\n" not in str(e.value)


def test_restore_path_is_required_and_yaml_is_generated():
    with pytest.raises(ConfigError, match="model.restore_from_path is not set"):
        _cfg().validate(1)
    from megatron_align.config.docgen import commented_yaml

    assert load_config(SteerLM2Config, CONF, validate=False) == SteerLM2Config()
    body = CONF.read_text().split("\n\n", 1)[1]
    assert body == commented_yaml(SteerLM2Config), "regenerate conf/train_steerlm2.yaml (see its header)"


BUILD_KEYS = ["input=in.jsonl", "output=out.jsonl", "policy_checkpoint=p", "sft_checkpoint=s",
              "rm_checkpoint=r"]


@pytest.mark.parametrize("extra, world, needle", [
    (["sample.greedy=true"], 1, "sample.greedy=true: greedy decoding has no sampling density"),
    (["sample.top_p=1.5"], 1, "sample.top_p: must be in [0, 1]"),
    (["sample.random_seed=null"], 1, "sample.random_seed is not set"),
    (["tensor_model_parallel_size=2"], 3, "3 ranks do not split into replicas"),
    (["tensor_model_parallel_size=0"], 1, "tensor_model_parallel_size=0 must be >= 1"),
])
def test_builder_bad_choices_are_one_line(extra, world, needle):
    """The builder's sampling and layout keys: greedy (no density), range errors, a world size that does not
    split into replicas."""
    from megatron_align.config.stages.steerlm2 import BuildSteerLM2Config

    cfg = load_config(BuildSteerLM2Config, None, [*BUILD_KEYS, *extra], validate=False)
    with pytest.raises(ConfigError) as e:
        cfg.validate(world)
    assert needle in str(e.value)


def test_builder_takes_every_processor_and_any_replica_count():
    from megatron_align.config.stages.steerlm2 import BuildSteerLM2Config

    keys = ["sample.top_k=50", "sample.top_p=0.9", "sample.repetition_penalty=1.2",
            "sample.min_tokens_to_generate=3", "tensor_model_parallel_size=2",
            "pipeline_model_parallel_size=2"]
    cfg = load_config(BuildSteerLM2Config, None, [*BUILD_KEYS, *keys], validate=False)
    cfg.validate(8)  # two replicas of TP=2 x PP=2
