"""Every YAML in conf/ loads into its schema and equals the schema's defaults (the YAML documents, the
dataclasses decide)."""

from megatron_align.config import load_config
from megatron_align.demo.steerlm.config import DemoConfig
from tests.helpers import ROOT


def test_demo_yaml_matches_schema_defaults():
    assert load_config(DemoConfig, ROOT / "conf" / "demo.yaml", validate=False) == DemoConfig()


def test_kernels_package_imports():
    import megatron_align.kernels as kernels

    assert kernels.__doc__


def test_training_rm_yaml_is_generated_from_the_schema():
    from megatron_align.config.docgen import commented_yaml
    from megatron_align.config.stages.reward_model import RMConfig

    path = ROOT / "conf" / "training_rm.yaml"
    assert load_config(RMConfig, path, validate=False) == RMConfig()
    body = path.read_text().split("\n\n", 1)[1]  # after the header comment block
    assert body == commented_yaml(RMConfig), "regenerate conf/training_rm.yaml (command in its header)"


def test_server_yamls_are_generated_from_their_schemas():
    """conf/megatron_gpt_inference.yaml and conf/inference_rm.yaml list every key (the limits and timeouts
    included) with the schema's default and doc line."""
    from megatron_align.config.docgen import commented_yaml
    from megatron_align.servers.config import GPTEvalConfig, RMServeConfig

    pairs = (("megatron_gpt_inference.yaml", GPTEvalConfig), ("inference_rm.yaml", RMServeConfig))
    for name, schema in pairs:
        path = ROOT / "conf" / name
        assert load_config(schema, path, validate=False) == schema()
        body = path.read_text().split("\n\n", 1)[1]
        assert body == commented_yaml(schema), f"regenerate conf/{name} (command in its header)"


def test_dpo_yaml_is_generated_from_the_schema():
    from megatron_align.config.docgen import commented_yaml
    from megatron_align.config.stages.dpo import DPOConfig

    path = ROOT / "conf" / "gpt_dpo.yaml"
    assert load_config(DPOConfig, path, validate=False) == DPOConfig()
    body = path.read_text().split("\n\n", 1)[1]
    assert body == commented_yaml(DPOConfig), "regenerate conf/gpt_dpo.yaml (command in its header)"
