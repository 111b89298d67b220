"""Tests of megatron_align.config: loading, Hydra-style overrides, one-line errors, layout checks,
base.yaml."""

import dataclasses
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from megatron_align.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainerConfig,
    check_batch_sizes,
    from_yaml_file,
    load_config,
    normalize_precision,
    parse_override,
    parse_value,
    to_yaml,
    validate_layout,
)
from megatron_align.config.docgen import field_docs
from megatron_align.config.tree import field_hints, optional_of
from megatron_align.config.yamlio import key_lines

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_omegaconf_conversion_warnings():
    # every assignment passes the declared type, so OmegaConf never converts implicitly
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    line = info.value.line()
    assert "\n" not in line and line.startswith("config error: ")
    return info.value


# ---- a stage schema composed the way stages do it ----
@dataclass
class SFTSection:
    max_steps: int = -1
    """Optimizer steps."""
    global_batch_size: int = 4
    """Sequences per step."""
    micro_batch_size: int = 1
    """Sequences per micro-batch."""


@dataclass
class SFTTrainerConfig(TrainerConfig):
    sft: SFTSection = field(default_factory=SFTSection)
    """SFT loop."""


@dataclass
class SFTRunConfig(RunConfig):
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
    """Trainer with the SFT section."""

    def validate(self, world_size: int) -> None:
        dp = world_size // (self.model.tensor_model_parallel_size * self.model.pipeline_model_parallel_size)
        check_batch_sizes(self.trainer.sft.global_batch_size, self.trainer.sft.micro_batch_size, dp,
                          prefix="trainer.sft")


# ---- defaults, types ----
def test_defaults_are_dataclass_instances():
    cfg = load_config(RunConfig)
    assert isinstance(cfg, RunConfig) and isinstance(cfg.model, ModelConfig)
    assert cfg == RunConfig()


@pytest.mark.parametrize("raw,norm", [(32, "32"), ("32", "32"), ("bf16", "bf16"), ("bf16-mixed", "bf16"),
                                      (16, "16"), ("16-mixed", "16"), ("BF16", "bf16")])
def test_precision_normalised(raw, norm):
    assert normalize_precision(raw) == norm
    assert TrainerConfig(precision=raw).precision == norm
    override = f"trainer.precision={raw}"
    assert load_config(RunConfig, None, [override]).trainer.precision == norm


def test_bad_precision():
    err = error_of(RunConfig, None, ["trainer.precision=fp8"])
    assert "trainer.precision='fp8' is not one of 32|bf16|16" in str(err)
    assert "from the command line: trainer.precision=fp8" in str(err)


# ---- override syntaxes ----
@pytest.mark.parametrize("text,value", [
    ("True", True), ("false", False), ("null", None), ("5e-6", 5e-6), ("1e4", 1e4), ("3", 3),
    ("[1,2]", [1, 2]), ("'5'", "5"), ('"a b"', "a b"), ("", ""), ("abc", "abc"), ("${model.x}", "${model.x}"),
    ("{a: 1}", {"a": 1}), ("a: b", "a: b"), ("yes", "yes"), ("2024-01-01", "2024-01-01"), ("[1", "[1"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_parse_override_ops():
    assert parse_override("a.b=1").op == "set"
    assert (parse_override("+a.b=1").op, parse_override("++a.b=1").op) == ("add", "upsert")
    ov = parse_override("~a.b")
    assert ov.op == "delete" and not ov.has_value
    assert parse_override("a=x=y").value == "x=y"
    with pytest.raises(ConfigError):
        parse_override("model.optim.lr")
    with pytest.raises(ConfigError):
        parse_override("model..lr=1")


def test_set_existing_keys_with_types():
    cfg = load_config(RunConfig, None, [
        "model.optim.lr=5e-6", "model.optim.weight_decay=0", "trainer.devices=2",
        "model.sequence_parallel=False", "model.optim.betas=[0.9,0.95]", "model.num_query_groups=2",
        "model.num_query_groups=null", "model.tokenizer.model='/tok.model'", "name=123",
    ])
    assert cfg.model.optim.lr == 5e-6 and isinstance(cfg.model.optim.weight_decay, float)
    assert cfg.trainer.devices == 2 and cfg.model.optim.betas == [0.9, 0.95]
    assert cfg.model.num_query_groups is None and cfg.model.tokenizer.model == "/tok.model"
    assert cfg.name == "123"


def test_int_field_accepts_integral_float():
    assert load_config(RunConfig, None, ["model.seed=1e3"]).model.seed == 1000


def test_free_form_model_data():
    cfg = load_config(RunConfig, None, [
        "+model.data.train_ds.file_path=/d/train.jsonl", "+model.data.train_ds.max_seq_length=4096",
        "++model.data.chat=true", "model.data.chat=false", "++model.data.train_ds.max_seq_length=128",
    ])
    assert cfg.model.data == {"train_ds": {"file_path": "/d/train.jsonl", "max_seq_length": 128},
                              "chat": False}


def test_equals_on_missing_free_form_key_says_use_plus():
    err = error_of(RunConfig, None, ["model.data.train_ds.file_path=/x"])
    assert "model.data.train_ds: no such key" in str(err)
    assert "+model.data.train_ds.file_path=" in str(err)


def test_plus_on_schema_key_is_an_error():
    err = error_of(RunConfig, None, ["+model.foo=1"])
    assert "model.foo: no such key" in str(err) and "model.data" in str(err)
    err = error_of(RunConfig, None, ["+trainer.devices=2"])
    assert "trainer.devices already exists" in str(err)
    err = error_of(RunConfig, None, ["+model.data.a=1", "+model.data.a=2"])
    assert "model.data.a already exists" in str(err)


def test_double_plus_on_schema_key_overrides_but_cannot_add():
    assert load_config(RunConfig, None, ["++trainer.devices=1"]).trainer.devices == 1
    err = error_of(RunConfig, None, ["++trainer.devicez=1"])
    assert "did you mean trainer.devices?" in str(err)


def test_tilde_removes_free_form_entry_and_resets_schema_field(tmp_path):
    path = write(tmp_path, """
        trainer: {precision: 32}
        model:
          hidden_size: 128
          optim: {lr: 3.0e-4, sched: {warmup_steps: 10}}
          data: {a: 1, b: {c: 2}}
        exp_manager:
          wandb_logger_kwargs: {project: p}
    """)
    cfg = load_config(RunConfig, path, ["~model.data.b", "~model.hidden_size", "~model.optim",
                                        "~exp_manager.wandb_logger_kwargs.name", "~trainer.precision=32"])
    assert cfg.model.data == {"a": 1}
    assert cfg.model.hidden_size == ModelConfig().hidden_size  # back to the schema default, not the YAML's
    assert cfg.model.optim == ModelConfig().optim
    assert cfg.exp_manager.wandb_logger_kwargs == {"project": "p"}
    assert cfg.trainer.precision == "bf16"
    err = error_of(RunConfig, path, ["~model.data.zzz"])
    assert "cannot delete model.data.zzz: no such key" in str(err)
    err = error_of(RunConfig, path, ["~model.hidden_size=64"])
    assert "the current value is 128" in str(err)


def test_later_override_wins():
    assert load_config(RunConfig, None, ["model.seed=1", "model.seed=2"]).model.seed == 2


# ---- interpolation ----
def test_interpolation_in_yaml_and_command_line(tmp_path):
    path = write(tmp_path, """
        name: sft_run
        model:
          encoder_seq_length: 1024
          max_position_embeddings: ${.encoder_seq_length}
          data:
            train_ds:
              max_seq_length: ${model.encoder_seq_length}
        exp_manager:
          name: ${name}
    """)
    cfg = load_config(RunConfig, path,
                      ["model.encoder_seq_length=2048", "model.optim.sched.max_steps=${model.seed}"])
    assert cfg.model.max_position_embeddings == 2048
    assert cfg.model.data["train_ds"]["max_seq_length"] == 2048
    assert cfg.exp_manager.name == "sft_run"
    assert cfg.model.optim.sched.max_steps == cfg.model.seed


def test_unresolvable_interpolation():
    err = error_of(RunConfig, None, ["model.num_layers=${model.nope}"])
    assert str(err).startswith("model.num_layers:") and "nope" in str(err)
    err = error_of(RunConfig, None, ["model.num_layers=${model.tokenizer.library}"])
    assert str(err).startswith("model.num_layers:")


# ---- misspelled keys, wrong types, sources ----
def test_misspelled_key_did_you_mean_command_line():
    err = error_of(RunConfig, None, ["model.optim.lrr=1e-5"])
    assert err.line() == ("config error: model.optim.lrr: no such key (did you mean model.optim.lr?) "
                          "(from the command line: model.optim.lrr=1e-5)")
    assert err.key == "model.optim.lrr"


def test_misplaced_key_suggests_the_right_section():
    assert "did you mean model.optim.lr?" in str(error_of(RunConfig, None, ["model.lr=1"]))
    err = error_of(SFTRunConfig, None, ["trainer.max_steps=10"])
    assert "did you mean trainer.sft.max_steps?" in str(err)


def test_misspelled_key_in_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, """
        trainer:
          devices: 1
        model:
          optim:
            lr: 1e-5
            weigth_decay: 0.1
    """)
    err = error_of(RunConfig, path)
    assert "model.optim.weigth_decay: no such key (did you mean model.optim.weight_decay?)" in str(err)
    assert err.source == f"in {path}, line 7"


def test_wrong_type():
    err = error_of(RunConfig, None, ["model.optim.lr=abc"])
    assert str(err).startswith("model.optim.lr='abc' is not a float")
    assert "is not an int" in str(error_of(RunConfig, None, ["model.num_layers=1.5"]))
    assert "is not a bool" in str(error_of(RunConfig, None, ["model.bias=maybe"]))
    assert "model.num_layers=null is not allowed" in str(error_of(RunConfig, None, ["model.num_layers=null"]))
    assert "model.optim=3 is not a section" in str(error_of(RunConfig, None, ["model.optim=3"]))
    assert "is not a list" in str(error_of(RunConfig, None, ["model.optim.betas=0.9"]))


def test_wrong_type_in_yaml(tmp_path):
    path = write(tmp_path, "model:\n  optim:\n    lr: fast\n")
    err = error_of(RunConfig, path)
    assert str(err) == f"model.optim.lr='fast' is not a float (in {path}, line 3)"


def test_bad_yaml_files(tmp_path):
    assert "invalid YAML" in str(error_of(RunConfig, write(tmp_path, "model:\n  num_layers: [1\n")))
    dup = error_of(RunConfig, write(tmp_path, "model:\n  num_layers: 2\n  num_layers: 3\n"))
    assert "written twice" in str(dup) and "line 3" in str(dup)
    assert "must be a mapping" in str(error_of(RunConfig, write(tmp_path, "- 1\n")))
    assert "cannot read config file" in str(error_of(RunConfig, tmp_path / "missing.yaml"))


def test_yaml_loading_is_safe(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    err = error_of(RunConfig, path)
    assert "invalid YAML" in str(err) and not marker.exists()


# ---- layout validation ----
def _run(**model) -> RunConfig:
    return RunConfig(model=ModelConfig(**model))


@pytest.mark.parametrize("cfg,world_size,key,fragment", [
    (_run(tensor_model_parallel_size=2), 3, "model.tensor_model_parallel_size",
     "does not divide the world size 3"),
    (_run(pipeline_model_parallel_size=4, num_layers=2), 4, "model.pipeline_model_parallel_size",
     "more than model.num_layers=2"),
    (_run(num_attention_heads=6, hidden_size=96, tensor_model_parallel_size=4), 4,
     "model.tensor_model_parallel_size", "num_attention_heads=6 is not divisible"),
    (_run(num_attention_heads=4, num_query_groups=2, tensor_model_parallel_size=4), 4,
     "model.tensor_model_parallel_size", "num_query_groups=2 is not divisible"),
    (_run(num_attention_heads=4, num_query_groups=3), 1, "model.num_query_groups",
     "num_attention_heads=4 is not"),
    (_run(sequence_parallel=True), 1, "model.sequence_parallel",
     "needs model.tensor_model_parallel_size > 1"),
    (_run(vocab_size=100, make_vocab_size_divisible_by=3, tensor_model_parallel_size=4), 4,
     "model.make_vocab_size_divisible_by", "padded vocabulary (102 rows"),
    (_run(hidden_size=66), 1, "model.hidden_size", "set model.kv_channels"),
    (_run(normalization="batchnorm"), 1, "model.normalization", "rmsnorm|layernorm"),
    (_run(activation="tanh"), 1, "model.activation", "fast-swiglu|swiglu|gelu|gelu-tanh|relu|squared-relu"),
    (_run(position_embedding_type="alibi"), 1, "model.position_embedding_type", "rope|learned_absolute"),
    (_run(position_embedding_type="learned_absolute", encoder_seq_length=1024), 1, "model.encoder_seq_length",
     "max_position_embeddings"),
    (_run(tensor_model_parallel_size=0), 1, "model.tensor_model_parallel_size", "must be at least 1"),
])
def test_impossible_layouts(cfg, world_size, key, fragment):
    with pytest.raises(ConfigError) as info:
        validate_layout(cfg, world_size)
    assert info.value.key == key and fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field_name,value", [("pad_seq_length_to_mult", 6), ("max_seq_length", 1026)])
def test_sequence_parallel_needs_row_lengths_divisible_by_tp(field_name, value):
    from megatron_align.config.stages.sft import SFTConfig

    cfg = SFTConfig()
    cfg.model.tensor_model_parallel_size, cfg.model.sequence_parallel = 4, True
    cfg.model.num_query_groups = None
    setattr(cfg.model.data.validation_ds, field_name, value)
    with pytest.raises(ConfigError) as info:
        validate_layout(cfg, 4)
    assert info.value.key == f"model.data.validation_ds.{field_name}"
    assert f"{value} is not a multiple of model.tensor_model_parallel_size=4" in str(info.value)
    cfg.model.sequence_parallel = False  # without the split any length is fine
    assert validate_layout(cfg, 4) == 4


def test_possible_layouts_pass():
    assert validate_layout(_run(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 8) == 8
    assert validate_layout(_run(hidden_size=66, kv_channels=16), 1) == 1
    assert validate_layout(_run(num_query_groups=2, tensor_model_parallel_size=2, sequence_parallel=True,
                                vocab_size=1000), 2) == 2
    cfg = RunConfig(trainer=TrainerConfig(num_nodes=2, devices=4),
                    model=ModelConfig(tensor_model_parallel_size=4))
    assert validate_layout(cfg) == 8


def test_load_config_validates_and_names_the_source(tmp_path):
    path = write(tmp_path, "trainer:\n  devices: 3\nmodel:\n  tensor_model_parallel_size: 2\n")
    err = error_of(RunConfig, path)
    assert err.key == "model.tensor_model_parallel_size" and err.source == f"in {path}, line 4"
    assert load_config(RunConfig, path, validate=False).trainer.devices == 3
    assert load_config(RunConfig, path, world_size=4).trainer.devices == 3


def test_stage_schema_composes_and_validates():
    cfg = load_config(SFTRunConfig, None, ["trainer.sft.max_steps=5", "trainer.devices=2"])
    assert isinstance(cfg.trainer, SFTTrainerConfig) and cfg.trainer.sft.max_steps == 5
    err = error_of(SFTRunConfig, None, ["trainer.devices=2", "trainer.sft.global_batch_size=3"])
    assert err.key == "trainer.sft.global_batch_size" and "multiple of 2" in str(err)
    assert err.source == "from the command line: trainer.sft.global_batch_size=3"


# ---- save / restore ----
def test_to_yaml_round_trip(tmp_path):
    cfg = load_config(RunConfig, None, ["trainer.precision=16-mixed", "+model.data.train_ds.file_path=/x",
                                        "model.optim.lr=3e-5", "model.vocab_size=1000"])
    text = to_yaml(cfg.model, tmp_path / "model.yaml")
    assert "lr: 3.0e-05" in text
    assert from_yaml_file(ModelConfig, tmp_path / "model.yaml") == cfg.model
    to_yaml(cfg, tmp_path / "run.yaml")
    assert from_yaml_file(RunConfig, tmp_path / "run.yaml") == cfg


# ---- conf/base.yaml and docstrings ----
def _schema_keys(cls, prefix=""):
    for name, hint in field_hints(cls).items():
        full = f"{prefix}{name}"
        yield full
        inner = optional_of(hint)[0]
        if dataclasses.is_dataclass(inner):
            yield from _schema_keys(inner, full + ".")


def _schema_classes(cls):
    yield cls
    for hint in field_hints(cls).values():
        inner = optional_of(hint)[0]
        if dataclasses.is_dataclass(inner):
            yield from _schema_classes(inner)


def test_base_yaml_lists_every_key_and_loads_to_defaults():
    path = REPO / "conf" / "base.yaml"
    keys = set(key_lines(path.read_text()))
    missing = [k for k in _schema_keys(RunConfig) if k not in keys]
    assert not missing, (f"conf/base.yaml lacks {missing}: "
                         "python -m megatron_align.config.docgen > conf/base.yaml")
    assert load_config(RunConfig, path) == RunConfig()


def test_every_schema_field_has_a_docstring():
    undocumented = [f"{cls.__name__}.{name}" for cls in _schema_classes(RunConfig)
                    for name in field_hints(cls) if name not in field_docs(cls)]
    assert not undocumented


# ---- the command-line wrapper ----
def test_run_cli_prints_one_line_and_exits_2(tmp_path):
    code = textwrap.dedent("""
        import sys
        from megatron_align.config import RunConfig, load_config, run_cli
        def main():
            load_config(RunConfig, None, sys.argv[1:])
        run_cli(main)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "SLURM_PROCID")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code, "model.optim.lrr=1e-5"], capture_output=True,
                          text=True, check=False, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    expected = ("config error: model.optim.lrr: no such key (did you mean model.optim.lr?) "
                "(from the command line: model.optim.lrr=1e-5)")
    assert proc.stderr.splitlines() == [expected]


def test_cli_main_decorator_and_quiet_non_zero_ranks(capsys, monkeypatch):
    from megatron_align.config import cli_main

    @cli_main
    def main(overrides):
        return load_config(RunConfig, None, overrides)

    assert main(["model.seed=7"]).model.seed == 7
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["model.seed=x"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("config error: model.seed='x' is not an int "
                                       "(from the command line: model.seed=x)\n")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        main(["model.seed=x"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("override, key", [
    ("model.optim.lr=-1", "model.optim.lr"), ("model.optim.lr=nan", "model.optim.lr"),
    ("model.optim.lr=inf", "model.optim.lr"), ("model.optim.weight_decay=-0.1", "model.optim.weight_decay"),
    ("model.optim.eps=0", "model.optim.eps"), ("model.optim.betas=[0.9,1.0]", "model.optim.betas[1]"),
    ("model.optim.betas=[0.9]", "model.optim.betas"),
    ("model.optim.sched.min_lr=-1", "model.optim.sched.min_lr"),
    ("trainer.sft.gradient_clip_val=nan", "trainer.sft.gradient_clip_val"),
])
def test_optimizer_values_are_range_checked_at_load(override, key):
    """Issue 12, section 5: a negative or NaN learning rate (and the like) is one line at load time."""
    from megatron_align.config.stages.sft import SFTConfig
    from tests.helpers import ROOT

    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, ROOT / "conf" / "gpt_sft.yaml", [override, "model.data.train_ds.file_path=x"])
    assert key in err.value.line() and "\n" not in err.value.line()
    assert "finite number" in err.value.line() or "two numbers" in err.value.line()


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("script", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.py")))
def test_every_example_script_answers_help(script, capsys):
    """``--help`` prints usage and exits 0 (a config script lists its keys with their YAML defaults)."""
    import runpy

    main = runpy.run_path(str(EXAMPLES / script))["main"]
    try:
        rc = main(["--help"])
    except SystemExit as exit_:  # argparse scripts
        rc = exit_.code
    out = capsys.readouterr().out
    assert rc in (0, None), out
    assert out.startswith("usage:"), out[:200]
    if script == "train_gpt_sft.py":  # keys of conf/gpt_sft.yaml with their doc lines
        assert "    # Peak learning rate.\n    lr: 1.0e-05\n" in out
        assert "# Samples per optimizer step over all data-parallel ranks." in out


def test_help_shows_the_yaml_defaults_and_stops_before_other_overrides(tmp_path, capsys):
    """Keys after ``--help`` are not applied (a bad one does not turn help into an error)."""
    from megatron_align.config.errors import run_cli
    from megatron_align.config.loader import load_config

    yaml = tmp_path / "c.yaml"
    yaml.write_text("trainer:\n  num_nodes: 3\n")

    @dataclass
    class Trainer:
        num_nodes: int = 1
        """Nodes in the job."""

    @dataclass
    class Cfg:
        trainer: Trainer = field(default_factory=Trainer)

    assert run_cli(lambda: load_config(Cfg, yaml, ["no.such.key=1", "--help"])) == 0
    out = capsys.readouterr().out
    assert "num_nodes: 3" in out and "# Nodes in the job." in out
    with pytest.raises(ConfigError):
        load_config(Cfg, yaml, ["no.such.key=1"])


@pytest.mark.parametrize("avx512_bf16, amx, expect", [(True, False, "bf16"), (False, True, "bf16"),
                                                     (False, False, "32")])
def test_demo_precision_auto_is_bf16_only_where_bf16_is_native(monkeypatch, avx512_bf16, amx, expect):
    import torch

    from megatron_align.demo.steerlm.config import DemoConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert DemoConfig().trainer.precision == "auto"
    assert load_config(DemoConfig, None, []).trainer.precision == expect
    assert load_config(DemoConfig, None, ["trainer.precision=bf16"]).trainer.precision == "bf16"


@pytest.mark.parametrize("command", ["demo", "convert", "steer", "steerlm2", "plot", "version", ""])
def test_every_cli_command_answers_help(command, capsys):
    """Issue 12, section 6: ``megatron-align demo --help`` (and each other sub-command) prints its usage and
    exits 0; ``demo --help`` lists the demo's keys with their defaults."""
    from megatron_align.cli import main

    argv = [command, "--help"] if command else ["--help"]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own --help
        rc = exc.code
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "usage" in out.out.lower() and "error" not in out.out.lower(), out.out
    if command == "demo":
        assert "precision: auto" in out.out and "size=tiny" in out.out and "megatron-align demo" in out.out


def test_demo_takes_an_optional_stage_name(capsys):
    """``megatron-align demo [stage]``: ``steerlm`` is the default and may be named; another name is one
    line."""
    from megatron_align.cli import main

    assert main(["demo", "steerlm", "--help"]) == 0 and "megatron-align demo" in capsys.readouterr().out
    assert main(["demo", "dpo", "--help"]) == 0 and "preference." in capsys.readouterr().out
    assert main(["demo", "ppo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "config error: unknown demo 'ppo'; available: steerlm, dpo, exo, steerlm2"


def test_steerlm2_jobs_answer_help_and_refuse_unknown_ones(capsys):
    """``megatron-align steerlm2 JOB --help`` lists each job's keys; an unknown job is one line."""
    from megatron_align.cli import main

    for job, key in (("build", "num_responses"), ("train", "forward_micro_batch_size"), ("rounds", "rounds")):
        assert main(["steerlm2", job, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"megatron-align steerlm2 {job}" in out and key in out, out[:500]
    assert main(["steerlm2", "sample"]) == 2
    assert "steerlm2 error: unknown job 'sample'" in capsys.readouterr().err


def test_deleting_the_lr_schedule_means_a_constant_lr():
    """``~model.optim.sched`` (the offline seed's loop): NeMo runs without a scheduler, a constant lr; other
    deleted fields still go back to their schema default."""
    from megatron_align.config.stages.sft import SFTConfig
    from megatron_align.training.lr import lr_at
    from tests.helpers import ROOT

    SFT_YAML = ROOT / "conf" / "gpt_sft.yaml"

    cfg = load_config(SFTConfig, SFT_YAML, ["model.optim.lr=2e-6", "~model.optim.sched"], validate=False)
    assert cfg.model.optim.sched.name == "Constant" and cfg.model.optim.sched.warmup_steps == 0
    assert [lr_at(s, cfg.model.optim, 100) for s in (0, 50, 99)] == [2e-6] * 3
    kept = load_config(SFTConfig, SFT_YAML, ["model.optim.lr=2e-6"], validate=False)
    assert kept.model.optim.sched.name == "CosineAnnealing"
    reset = load_config(SFTConfig, SFT_YAML, ["model.optim.weight_decay=0.5", "~model.optim.weight_decay"],
                        validate=False)
    assert reset.model.optim.weight_decay == SFTConfig().model.optim.weight_decay
