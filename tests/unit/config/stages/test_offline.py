"""config/stages/offline: the seed's sampler and labeler command lines load with only paths changed, every bad
choice is one line naming its key, and conf/ holds the YAMLs generated from the schemas."""

import pytest

from megatron_align.config import ConfigError, load_config
from megatron_align.config.stages.offline import RandomSamplerConfig, RewardLabelerConfig
from tests.helpers import ROOT

SAMPLER = ["gpt_model_file=/p/sft_model.nemo", "inference.greedy=False", "inference.add_BOS=False",
           "inference.tokens_to_generate=2048", "inference.temperature=0.9", "trainer.num_nodes=1",
           "trainer.devices=8", "trainer.precision=bf16-mixed", "megatron_amp_O2=True",
           "data.micro_batch_size=32", "data.max_seq_length=2048", "data.n=16",
           "data.concat_sampling_probabilities=[1]", "data.file_names=[/p/prompts_dataset.jsonl]",
           "data.hf_dataset=True",
           "output_file=/p/generated_samples.jsonl", "checkpoint_interval=1"]
LABELER_DT = ["gpt_model_file=/p/reward_model.nemo", "trainer.num_nodes=1", "trainer.devices=8",
              "trainer.precision=bf16-mixed", "megatron_amp_O2=True", "data.micro_batch_size=8",
              "data.max_seq_length=4096", "data.file_names=[/p/gen.jsonl,/p/sft.jsonl,/p/pref.jsonl]",
              "data.concat_sampling_probabilities=[0.33,0.33,0.34]", "data.hf_dataset=True", "processor=dt",
              "reward_standardization.enable=True", "reward_standardization.mean=1.5",
              "reward_standardization.std=2.0", "output_file=/p/filtered_samples.jsonl",
              "checkpoint_interval=4"]


def _load(schema, conf, args):
    return load_config(schema, ROOT / "conf" / conf, args, validate=False)


def test_the_seeds_commands_load():
    s = _load(RandomSamplerConfig, "megatron_random_sampler.yaml",
              [*SAMPLER, "data.sample_split_size=2048", "data.sample_split_iter=3", "export_reward=False"])
    s.validate(8)
    assert s.data.n == 16 and s.inference.temperature == 0.9 and s.trainer.precision == "bf16"
    assert (s.data.sample_split_size, s.data.sample_split_iter, s.data.input_key) == (2048, 3, "input")
    lab = _load(RewardLabelerConfig, "megatron_reward_labeler.yaml", LABELER_DT)
    lab.validate(8)
    assert lab.processor == "dt" and lab.reward_template == "{input} <rm_score>: {reward} "
    assert lab.reward_standardization.mean == 1.5
    rest = _load(RewardLabelerConfig, "megatron_reward_labeler.yaml",
                 [*LABELER_DT[:7], "data.file_names=[/p/gen.jsonl]", "data.concat_sampling_probabilities=[1]",
                  "processor=rest", "threshold=0", "output_file=/p/filtered_samples.jsonl"])
    rest.validate(8)


@pytest.mark.parametrize("schema, args, needle", [
    (RandomSamplerConfig, ["data.n=0"], "data.n=0 must be >= 1"),
    (RandomSamplerConfig, ["data.concat_sampling_probabilities=[0.5]"], "sums to 0.5, not 1"),
    (RandomSamplerConfig, ["data.concat_sampling_probabilities=[0.5,0.5]"], "one weight per file"),
    (RandomSamplerConfig, ["data.sample_split_size=0"], "data.sample_split_size=0 must be >= 1"),
    (RandomSamplerConfig, ["inference.top_p=2"], "inference.top_p: must be in [0, 1]"),
    (RandomSamplerConfig, ["inference.random_seed=null"], "inference.random_seed is not set"),
    (RandomSamplerConfig, ["data.file_names=[]"], "data.file_names is not set"),
    (RewardLabelerConfig, ["processor=dt", "reward_template={input} scored"], "has no {reward}"),
    (RewardLabelerConfig, ["processor=dt", "reward_template={input} {score} {reward}"], "unknown field(s)"),
    (RewardLabelerConfig, ["processor=best"], "processor='best' is not one of rs|rest|dt|null"),
    (RewardLabelerConfig, ["reward_standardization.std=0"], "reward_standardization.std=0 must be > 0"),
    (RewardLabelerConfig, ["reward_attribute=1", "reward_weights=[1,0]"], "both set"),
    (RewardLabelerConfig, ["output_file=null"], "output_file is not set"),
])
def test_bad_choices_are_one_line(schema, args, needle):
    base = ["gpt_model_file=m", "output_file=o.jsonl", "data.file_names=[a.jsonl]"]
    cfg = load_config(schema, None, [*base, *args], validate=False)
    with pytest.raises(ConfigError) as e:
        cfg.validate(1)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_conf_yamls_are_generated_from_the_schemas():
    from megatron_align.config.docgen import commented_yaml

    for name, schema in (("megatron_random_sampler.yaml", RandomSamplerConfig),
                         ("megatron_reward_labeler.yaml", RewardLabelerConfig)):
        path = ROOT / "conf" / name
        assert load_config(schema, path, validate=False) == schema()
        assert path.read_text().split("\n\n", 1)[1] == commented_yaml(schema), f"regenerate conf/{name}"
