"""Reward-model config: the seed's four commands load with their NeMo-Aligner meanings (paths and sizes
changed), and impossible combinations stop with one line naming the key."""

import shlex

import pytest

from megatron_align.config import ConfigError, load_config
from megatron_align.config.model import ModelConfig
from megatron_align.config.stages.reward_model import RMConfig, split_files
from megatron_align.models.checkpoint import write_model_config
from tests.helpers import ROOT

CONF = ROOT / "conf" / "training_rm.yaml"
SEED = ROOT / "tests" / "data" / "seed_rm_commands.txt"


@pytest.fixture
def restored(tmp_path):
    """A checkpoint directory whose model_config decides the architecture (a GQA model, tiny sizes)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    write_model_config(ModelConfig(num_layers=4, hidden_size=128, num_attention_heads=16, num_query_groups=8,
                                   ffn_hidden_size=256, vocab_size=1000, encoder_seq_length=4096), d /
                       "model_config.yaml")
    return d


def _seed(index, restored, tmp_path, **sizes):
    block = SEED.read_text().strip().split("\n\n")[index]
    out = []
    for arg in shlex.split(block.replace("\\\n", " "))[2:]:
        key, _, value = arg.partition("=")
        bare = key.lstrip("+")
        if bare == "pretrained_checkpoint.restore_from_path":
            value = str(restored)
        elif bare == "exp_manager.explicit_log_dir":
            value = str(tmp_path / "run")
        elif bare in sizes:
            value = str(sizes[bare])
        out.append(f"{key}={value}")
    return out


def test_seed_commands_load_with_their_meanings(restored, tmp_path):
    small = {"trainer.num_nodes": 1, "trainer.devices": 2, "model.tensor_model_parallel_size": 2,
             "model.pipeline_model_parallel_size": 1, "model.global_batch_size": 8}
    first = load_config(RMConfig, CONF, _seed(0, restored, tmp_path, **small))
    m = first.model
    assert m.reward_model_type == "regression" and m.regression.num_attributes == 9 == m.num_attributes
    assert m.regression.loss_func == "regression" and not m.regression.load_rm_head_weights
    assert m.data.data_prefix == {"train": ["data/merge_train_reg.jsonl"],
                                  "validation": ["data/merge_val_reg.jsonl"],
                                  "test": ["data/merge_val_reg.jsonl"]}
    assert split_files(m.data.data_prefix) == {"train": (["data/merge_train_reg.jsonl"], None),
                                               "validation": (["data/merge_val_reg.jsonl"], None)}
    assert m.micro_batch_size == 2 and m.global_batch_size == 8 and m.data.data_impl == "jsonl"
    assert first.trainer.rm.max_steps == 800 and first.trainer.rm.val_check_interval == 10
    assert first.trainer.rm.save_interval == 10 and first.trainer.rm.train_random_sampler is True
    assert m.activations_checkpoint_granularity == "selective" and m.optim.sched.constant_steps == 0
    assert m.optim.lr == 9e-6  # training_rm.yaml's default, which this command keeps
    em = first.exp_manager
    assert em.create_wandb_logger and em.wandb_logger_kwargs == {"project": "steerlm", "name": "rm_training"}
    assert m.num_attention_heads == 16 and m.hidden_size == 128  # from the restored checkpoint
    assert first.pretrained_checkpoint.restore_from_path == str(restored)

    stage2 = load_config(RMConfig, CONF, _seed(3, restored, tmp_path, **small))
    reg = stage2.model.regression
    assert reg.loss_func == "scaled_bt" and reg.load_rm_head_weights is True and reg.score_attribute == 4
    assert stage2.trainer.rm.train_random_sampler is False and stage2.trainer.rm.max_steps == 105
    assert stage2.model.optim.lr == 1e-6 == stage2.model.optim.sched.min_lr
    assert stage2.model.optim.sched.warmup_steps == 10 and stage2.model.sequence_parallel is False
    assert stage2.model.activations_checkpoint_method == "uniform"
    for index in (1, 2):
        cfg = load_config(RMConfig, CONF, _seed(index, restored, tmp_path, **small))
        assert cfg.trainer.rm.max_steps == 317 and cfg.model.optim.lr == 2e-6


def _base(restored, *extra):
    prefix = [] if any("data_prefix" in e for e in extra) else ["model.data.data_prefix={train: [t.jsonl]}"]
    return [f"pretrained_checkpoint.restore_from_path={restored}", "model.reward_model_type=regression",
            "model.regression.num_attributes=9", *prefix, *extra]


@pytest.mark.parametrize("extra, key, text", [
    (["model.regression.loss_func=scaled_bt", "++model.micro_batch_size=3", "++model.global_batch_size=6"],
     "model.micro_batch_size", "reads rows (2i, 2i+1)"),
    (["model.regression.loss_func=margin_bt", "model.regression.score_attribute=9"],
     "model.regression.score_attribute", "the head has 9"),
    (["model.regression.loss_func=hinge"], "model.regression.loss_func", "is not one of"),
    (["model.reward_model_type=binary_ranking", "model.regression.num_attributes=1",
      "model.regression.loss_func=scaled_bt"], "model.regression.loss_func", "preference strengths"),
    (["model.reward_model_type=binary_ranking"], "model.regression.num_attributes", "set it to 1"),
    (["model.regression.merge_attributes=True"], "model.regression.merge_attributes", "serving"),
    (["model.data.data_prefix={validation: [v.jsonl]}"], "model.data.data_prefix", "training file"),
    (["model.data.data_prefix={train: [a.jsonl, b.jsonl]}"], "model.data.data_prefix.train",
     "without weights"),
    (["model.data.splits_string=98,1,1"], "model.data.splits_string", "not supported"),
    (["++model.global_batch_size=5"], "model.global_batch_size", "not divisible"),
])
def test_bad_combinations_are_one_line_errors(restored, extra, key, text):
    with pytest.raises(ConfigError) as e:
        load_config(RMConfig, CONF, _base(restored, *extra))
    assert e.value.key == key and text in str(e.value) and "\n" not in str(e.value)


def test_blend_weights_and_restore_alias(restored):
    assert split_files({"train": [0.3, "a.jsonl", 0.7, "b.jsonl"], "test": ["x"]}) == {
        "train": (["a.jsonl", "b.jsonl"], [0.3, 0.7])}
    cfg = load_config(RMConfig, CONF, _base(restored)[1:] + [f"model.restore_from_path={restored}"])
    assert cfg.restore_path() == str(restored) and cfg.model.hidden_size == 128


def test_sft_checkpoint_config_restores_a_reward_model(tmp_path):
    """SFT checkpoints store their stage's model section; the RM stage reads the architecture from it (stage
    keys such as answer_only_loss written by older versions are ignored, new ones are not written)."""
    from omegaconf import OmegaConf

    from megatron_align.config.stages.sft import SFTModelConfig
    from megatron_align.models.checkpoint import read_model_config

    d = tmp_path / "sft"
    d.mkdir()
    sft = SFTModelConfig(hidden_size=96, num_attention_heads=6, answer_only_loss=False)
    OmegaConf.save(OmegaConf.structured(sft), str(d / "model_config.yaml"))  # as SFT wrote it before
    assert read_model_config(d).hidden_size == 96
    write_model_config(sft, d / "model_config.yaml")
    assert "answer_only_loss" not in (d / "model_config.yaml").read_text()
    cfg = load_config(RMConfig, CONF, _base(d))
    assert cfg.model.hidden_size == 96 and cfg.model.num_attributes == 9
