"""Command-line overrides in the Hydra syntax NeMo-Aligner users type, parsed and applied to a
``ConfigTree``.

=====================  =======================================================================================
``key=value``          set an existing key (a misspelled key is an error, with a did-you-mean)
``+key=value``         add a key that does not exist yet; only inside free-form dicts such as ``model.data``
``++key=value``        set the key, adding it if it is missing (adding, again, only inside free-form dicts)
``~key``               in a free-form dict: remove the entry; on a schema field: reset it to its *schema*
                       default (a field cannot disappear: code reads every field). ``~key=value`` only acts
                       when the current value equals ``value``, as in Hydra.
=====================  =======================================================================================

Values are read like YAML: ``true``/``False``, ``null``, ``5e-6`` (a float, as in OmegaConf), ``[1,2]``,
``{a: 1}``, ``'quoted'`` strings; ``key=`` is the empty string; ``${...}`` interpolations are kept and
resolved with the rest of the config. A value YAML cannot read is taken as a plain string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from megatron_align.config.errors import ConfigError
from megatron_align.config.tree import ConfigTree
from megatron_align.config.yamlio import load_yaml_text

_KEY_RE = re.compile(r"^[A-Za-z_0-9][A-Za-z_0-9\-]*(\.[A-Za-z_0-9][A-Za-z_0-9\-]*)*$")


def parse_value(text: str) -> Any:
    """A command-line value read like YAML (see the module docstring)."""
    if text == "":
        return ""
    try:
        value = load_yaml_text(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and not text.lstrip().startswith("{"):
        return text  # "a: b" is a string with a colon, not a mapping
    return value


@dataclass(frozen=True)
class Override:
    """One parsed command-line override."""

    op: str
    """``set`` (``key=v``), ``add`` (``+key=v``), ``upsert`` (``++key=v``) or ``delete`` (``~key``)."""
    key: str
    """Dotted key, e.g. ``model.optim.lr``."""
    value: Any
    """Parsed value; for ``delete`` the value it must equal, or ``None`` when none was given."""
    has_value: bool
    """Whether ``=value`` was written (always true except for a bare ``~key``)."""
    text: str
    """The override as the user typed it."""


def parse_override(text: str) -> Override:
    """``"++model.data.seed=3"`` -> ``Override("upsert", "model.data.seed", 3, True, ...)``."""
    source = f"from the command line: {text}"
    if text.startswith("++"):
        op, rest = "upsert", text[2:]
    elif text.startswith("+"):
        op, rest = "add", text[1:]
    elif text.startswith("~"):
        op, rest = "delete", text[1:]
    else:
        op, rest = "set", text
    key, eq, raw = rest.partition("=")
    key = key.strip()
    if not eq and op != "delete":
        raise ConfigError(f"{text!r} is not an override: write key=value "
                          "(or ~key to delete, +key=value to add)", source=source)
    if not _KEY_RE.match(key):
        raise ConfigError(f"{text!r}: {key!r} is not a dotted key such as model.optim.lr", source=source)
    return Override(op, key, parse_value(raw) if eq else None, bool(eq), text)


def apply_override(tree: ConfigTree, override: Override | str) -> None:
    """Apply one override (parsed or as typed) to ``tree``."""
    ov = parse_override(override) if isinstance(override, str) else override
    source = f"from the command line: {ov.text}"
    if ov.op == "delete":
        if ov.has_value:
            tree.delete(ov.key, source, expect=ov.value)
        else:
            tree.delete(ov.key, source)
    else:
        tree.set(ov.key, ov.value, source, mode=ov.op)


def apply_overrides(tree: ConfigTree, overrides: Iterable[str]) -> None:
    """Apply overrides in order (a later one wins over an earlier one)."""
    for text in overrides:
        apply_override(tree, text)
