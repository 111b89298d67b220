"""config/stages/dpo: NeMo-Aligner's gpt_dpo.yaml keys and defaults load; each bad choice is one line naming
its key (checked before any process starts)."""

import pytest

from megatron_align.config import ConfigError, load_config
from megatron_align.config.stages.dpo import DPOConfig
from tests.helpers import ROOT

CONF = ROOT / "conf" / "gpt_dpo.yaml"
BASE = [
    "pretrained_checkpoint.restore_from_path=/ckpt",
    "model.data.data_prefix={train: [a.jsonl], validation: [a.jsonl], test: [a.jsonl]}",
    "trainer.devices=1",
    "trainer.num_nodes=1",
    "model.global_batch_size=4",
    "model.micro_batch_size=2",
]


def test_nemo_aligner_defaults_and_seed_keys():
    cfg = load_config(
        DPOConfig,
        CONF,
        [
            *BASE,
            "model.dpo.ref_policy_kl_penalty=0.1",
            "model.dpo.preference_loss=rpo_sq",
            "trainer.dpo.max_steps=10",
        ],
        world_size=1,
    )
    d = cfg.model.dpo
    assert (d.ref_policy_kl_penalty, d.preference_loss, d.sft_loss_weight, d.gt_reward_scale) == (
        0.1,
        "rpo_sq",
        0.0,
        1.0,
    )
    assert cfg.model.data.default_chosen_reward == 1.0 and cfg.model.data.default_rejected_reward == 0.0
    assert cfg.model.optim.lr == 9e-6 and cfg.trainer.dpo.max_steps == 10
    exo = load_config(
        DPOConfig,
        CONF,
        [
            *BASE,
            "model.dpo.preference_loss=exo-rw",
            "model.dpo.num_contrastive=4",
            "model.dpo.beta_r=0.5",
            "model.dpo.temp=0.8",
        ],
        world_size=1,
    )
    assert (exo.model.dpo.num_contrastive, exo.model.dpo.beta_pi) == (4, None)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.dpo.preference_loss=kto", "model.dpo.preference_loss"),
        ("model.dpo.ref_policy_kl_penalty=0", "model.dpo.ref_policy_kl_penalty"),
        ("model.dpo.preference_loss_weight=0", "model.dpo.preference_loss_weight"),
        ("model.dpo.temp=-1", "model.dpo.temp"),
        ("model.data.overlong=wrap", "model.data.overlong"),
    ],
)
def test_bad_values_are_one_line(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(DPOConfig, CONF, [*BASE, override], world_size=1)
    assert err.value.key == key and "\n" not in err.value.line()


def test_exo_pref_needs_pairs_and_a_start_checkpoint_is_required():
    with pytest.raises(ConfigError, match="num_contrastive=2"):
        load_config(
            DPOConfig,
            CONF,
            [*BASE, "model.dpo.preference_loss=exo-pref", "model.dpo.num_contrastive=4"],
            world_size=1,
        )
    with pytest.raises(ConfigError, match="pretrained_checkpoint.restore_from_path is not set"):
        load_config(DPOConfig, CONF, BASE[1:], world_size=1)
