"""The SFT schema checks every data key at load time, before any process starts (issue 13)."""

from __future__ import annotations

import pytest

from megatron_align.config import ConfigError, load_config
from megatron_align.config.loader import CONF_DIR
from megatron_align.config.stages.sft import SFTConfig


@pytest.mark.parametrize("override, key", [
    ("model.data.chat_template=no_such_template", "model.data.chat_template"),
    ("model.data.num_workers=-1", "model.data.num_workers"),
])
def test_data_config_errors_surface_at_load(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, CONF_DIR / "gpt_sft.yaml",
                    ["model.data.train_ds.file_path=train.jsonl", "model.data.chat=True", override])
    assert err.value.key == key and "\n" not in err.value.line(), err.value.line()
