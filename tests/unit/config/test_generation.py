"""``GenerationConfig``: backend switch (``backend`` / NeMo's ``trt_llm.enable``) and one-line errors naming
the key, including TensorRT-LLM not installed (``find_spec`` is replaced, so the test does not depend on
what this machine has)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from megatron_align.config.errors import ConfigError
from megatron_align.config.generation import GenerationConfig, TRTLLMConfig
from megatron_align.config.loader import load_config
from tests.helpers import tiny_llama

P = "trainer.self_rewarding"


def installed(_name):
    return object()


def missing(_name):
    return None


def check(cfg, **kw):
    kw.setdefault("find_spec", installed)
    cfg.validate(P, **kw)


def test_backend_follows_enable_unless_set():
    assert GenerationConfig().resolved_backend() == "megatron"
    assert GenerationConfig(trt_llm=TRTLLMConfig(enable=True)).resolved_backend() == "trtllm"
    assert GenerationConfig(backend="trtllm").resolved_backend() == "trtllm"
    check(GenerationConfig(), find_spec=missing)  # megatron never needs tensorrt_llm
    check(GenerationConfig(trt_llm=TRTLLMConfig(enable=True)), model=tiny_llama(), tp=2, pp=1)


@pytest.mark.parametrize("cfg,key,text", [
    (GenerationConfig(backend="vllm"), f"{P}.backend", "megatron|trtllm"),
    (GenerationConfig(backend="megatron", trt_llm=TRTLLMConfig(enable=True)), f"{P}.backend", "contradicts"),
    (GenerationConfig(backend="trtllm", trt_llm=TRTLLMConfig(model_type="gptnext")),
     f"{P}.trt_llm.model_type", "gptnext"),
    (GenerationConfig(backend="trtllm", trt_llm=TRTLLMConfig(max_output_len=0)),
     f"{P}.trt_llm.max_output_len", "at least 1"),
    (GenerationConfig(backend="trtllm", trt_llm=TRTLLMConfig(kv_cache_free_gpu_memory_fraction=1.5)),
     f"{P}.trt_llm.kv_cache_free_gpu_memory_fraction", "between 0 and 1"),
])
def test_bad_settings_name_their_key(cfg, key, text):
    with pytest.raises(ConfigError, match=text) as err:
        check(cfg)
    assert err.value.key == key and key in str(err.value) and "\n" not in err.value.line()


def test_not_installed_names_the_switch_used():
    with pytest.raises(ConfigError, match="tensorrt_llm is not installed") as err:
        check(GenerationConfig(trt_llm=TRTLLMConfig(enable=True)), find_spec=missing)
    assert err.value.key == f"{P}.trt_llm.enable" and f"{P}.trt_llm.enable=true" in err.value.line()
    with pytest.raises(ConfigError) as err:
        check(GenerationConfig(backend="trtllm"), find_spec=missing)
    assert err.value.key == f"{P}.backend" and f"{P}.backend=trtllm" in err.value.line()


def test_model_the_engine_cannot_take_is_refused():
    on = GenerationConfig(trt_llm=TRTLLMConfig(enable=True))
    with pytest.raises(ConfigError, match="normalization=layernorm"):
        check(on, model=tiny_llama(normalization="layernorm"))
    with pytest.raises(ConfigError, match="tensor_parallel_size=8"):
        check(on, model=tiny_llama(), tp=8)  # 4 heads
    resharded = GenerationConfig(trt_llm=TRTLLMConfig(enable=True, reshard=True))
    with pytest.raises(ConfigError, match="tensor_parallel_size=8"):
        check(resharded, model=tiny_llama(), tp=2, pp=4)  # engine TP = 2 x 4
    check(resharded, model=tiny_llama(), tp=2, pp=2)


@dataclass
class SelfRewardingSection(GenerationConfig):
    max_iterations: int = 3


@dataclass
class Trainer:
    self_rewarding: SelfRewardingSection = field(default_factory=SelfRewardingSection)


@dataclass
class Run:
    trainer: Trainer = field(default_factory=Trainer)


def test_nemo_command_line_keys_fill_a_stage_section():
    """A stage section that extends GenerationConfig reads the seed's ``trainer.<stage>.trt_llm.*`` keys."""
    keys = [f"{P}.trt_llm.enable=true", f"{P}.trt_llm.model_type=llama", f"{P}.trt_llm.max_input_len=2048",
            f"{P}.trt_llm.unload_engine_train=true"]
    run = load_config(Run, overrides=keys)
    section = run.trainer.self_rewarding
    t = section.trt_llm
    assert (t.enable, t.model_type, t.max_input_len, t.unload_engine_train) == (True, "llama", 2048, True)
    assert section.resolved_backend() == "trtllm"
    with pytest.raises(ConfigError, match=f"{P}.trt_llm.enable=true: tensorrt_llm is not installed"):
        section.validate(P, find_spec=missing)
    with pytest.raises(ConfigError, match="trt_llm.enabel"):
        load_config(Run, overrides=[f"{P}.trt_llm.enabel=true"])


def test_every_field_has_a_docstring():
    from megatron_align.config.docgen import field_docs
    from megatron_align.config.tree import field_hints

    for cls in (GenerationConfig, TRTLLMConfig):
        assert set(field_hints(cls)) <= set(field_docs(cls)), cls.__name__
