"""Every YAML in conf/ loads into its schema and equals the schema's defaults (the YAML documents, the
dataclasses decide)."""

from megatron_align.algorithms.demo import DemoConfig
from megatron_align.config import load_config
from tests.helpers import ROOT


def test_demo_yaml_matches_schema_defaults():
    assert load_config(DemoConfig, ROOT / "conf" / "demo.yaml") == DemoConfig()


def test_kernels_package_imports():
    import kernels

    assert kernels.__doc__
