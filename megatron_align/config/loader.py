"""Loading a run's config: schema defaults <- YAML file <- command-line overrides -> a validated dataclass.

``load_config`` is what every entry point calls; ``to_yaml`` / ``from_yaml_file`` save and restore a config
or one section of it (the checkpoint stores the model section this way). YAML is read with a safe loader only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf

from megatron_align.config.errors import ConfigError, HelpRequested
from megatron_align.config.overrides import apply_overrides
from megatron_align.config.tree import ConfigTree
from megatron_align.config.validate import validate_layout
from megatron_align.config.yamlio import key_lines, load_yaml_text

T = TypeVar("T")
PathLike = str | os.PathLike

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The repository's ``conf/``: one commented YAML per stage, generated from the schemas."""


def merge_yaml_file(tree: ConfigTree, path: PathLike) -> None:
    """Merge a YAML file into ``tree``; errors name the file and the line of the offending key."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}", source=None) from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys (e.g. 'trainer:'), "
                          f"not a {type(data).__name__}")
    lines = key_lines(text)

    def source_of(full: str) -> str:
        key = full
        while key and key not in lines:
            key = key.rpartition(".")[0]
        return f"in {path}, line {lines[key]}" if key else f"in {path}"

    tree.merge(data, source_of)


def help_text(defaults: Any, yaml_path: PathLike | None, epilog: str = "", prog: str | None = None) -> str:
    """Usage, then every key with its default (after ``yaml_path``) and its one-line documentation.
    ``prog``: the command as the user types it (default: the running script's file name)."""
    from megatron_align.config.docgen import commented_yaml

    prog = prog or os.path.basename(sys.argv[0] or "SCRIPT")
    source = f" (defaults: the schema, then {yaml_path})" if yaml_path is not None else " (their defaults)"
    return (f"usage: [torchrun ...] {prog} [key=value ...] [++key=value ...] [~key ...]\n\n"
            f"Keys{source}; set any with key=value, nested keys with dots (model.optim.lr=5e-6):\n\n"
            + commented_yaml(defaults) + (f"\n{epilog.rstrip()}\n" if epilog else ""))


def load_config(schema_cls: type[T], yaml_path: PathLike | None = None, overrides: Iterable[str] = (),
                *, validate: bool = True, world_size: int | None = None, help_epilog: str = "",
                help_prog: str | None = None) -> T:
    """Build a ``schema_cls`` instance: its defaults, then ``yaml_path`` (optional), then ``overrides``.

    Interpolations (``${model.encoder_seq_length}``) are resolved. With ``validate`` (the default) and a
    schema that has ``trainer`` and ``model`` sections, the schema's ``resolve(self) -> cfg`` runs if it
    defines one, then :func:`validate_layout`, then the schema's own ``validate(self, world_size)`` method if
    it defines one (where a stage checks its batch sizes, ...).
    Every mistake raises :class:`ConfigError` (one line, naming key, fix and source).
    """
    overrides = list(overrides)
    tree = ConfigTree(schema_cls)
    if yaml_path is not None:
        merge_yaml_file(tree, yaml_path)
    if any(arg in ("-h", "--help") for arg in overrides):
        raise HelpRequested(help_text(tree.to_object(), yaml_path, help_epilog, help_prog))
    apply_overrides(tree, overrides)
    cfg = tree.to_object()
    if validate and hasattr(cfg, "trainer") and hasattr(cfg, "model"):
        try:
            # A stage may complete its config from elsewhere first (e.g. the architecture stored in the
            # checkpoint named by model.restore_from_path), so that validation sees the real model.
            resolve = getattr(cfg, "resolve", None)
            if callable(resolve):
                cfg = resolve()
            ws = validate_layout(cfg, world_size)
            stage_check = getattr(cfg, "validate", None)
            if callable(stage_check):
                stage_check(ws)
        except ConfigError as err:
            if err.source is None:
                err.source = tree.origin_of(err.key)
            raise
    return cfg


def to_yaml(cfg: Any, path: PathLike | None = None) -> str:
    """The YAML text of a config (any schema dataclass instance or section); also written to ``path``
    if given."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_yaml expects a config dataclass instance, got {type(cfg).__name__}")
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def from_yaml_file(schema_cls: type[T], path: PathLike, overrides: Iterable[str] = (), *,
                   validate: bool = False) -> T:
    """Restore a ``schema_cls`` instance saved with :func:`to_yaml` (unknown keys are errors, as
    everywhere)."""
    return load_config(schema_cls, path, overrides, validate=validate)
