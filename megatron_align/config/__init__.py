"""``megatron_align.config``: dataclass schemas (the one home of every default), YAML + override loading,
layout validation and one-line config errors. Public API re-exported here.
"""

from megatron_align.config.errors import ConfigError, UserError, cli_main, run_cli
from megatron_align.config.loader import from_yaml_file, load_config, merge_yaml_file, to_yaml
from megatron_align.config.model import ModelConfig, OptimConfig, OptimSchedConfig, TokenizerConfig
from megatron_align.config.overrides import (
    Override,
    apply_override,
    apply_overrides,
    parse_override,
    parse_value,
)
from megatron_align.config.schema import (
    CheckpointCallbackParams,
    ExpManagerConfig,
    RunConfig,
    TrainerConfig,
    normalize_precision,
)
from megatron_align.config.tree import ConfigTree
from megatron_align.config.validate import (
    ACTIVATIONS,
    NORMALIZATIONS,
    POSITION_EMBEDDING_TYPES,
    check_batch_sizes,
    check_launch_matches,
    validate_layout,
)

__all__ = [
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "POSITION_EMBEDDING_TYPES",
    "CheckpointCallbackParams",
    "ConfigError",
    "ConfigTree",
    "ExpManagerConfig",
    "ModelConfig",
    "OptimConfig",
    "OptimSchedConfig",
    "Override",
    "RunConfig",
    "TokenizerConfig",
    "TrainerConfig",
    "UserError",
    "apply_override",
    "apply_overrides",
    "check_batch_sizes",
    "check_launch_matches",
    "cli_main",
    "from_yaml_file",
    "load_config",
    "merge_yaml_file",
    "normalize_precision",
    "parse_override",
    "parse_value",
    "run_cli",
    "to_yaml",
    "validate_layout",
]
