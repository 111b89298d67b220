"""Typed edits of an OmegaConf tree against its dataclass schema, each failure a one-line ``ConfigError``.

``ConfigTree`` holds the tree being built from a schema; the YAML loader and the command-line overrides both
edit it through ``set`` / ``delete`` / ``merge``, so a misspelled key or a wrong type reads the same wherever
it comes from. Types are checked here against the dataclass annotations (not left to OmegaConf) so that
messages say ``model.optim.lr='abc' is not a float``. A dict-typed field (``model.data``) is free-form: any
key may live in it. Every key set remembers where its value came from, for later error messages.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import operator
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, Union

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from megatron_align.config.errors import ConfigError

SourceFn = Callable[[str], str | None]
"""Maps a full key to where its value came from (``in x.yaml, line 3``), for error messages."""

_NONE_TYPE = type(None)
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
               "0": False}


class _Mismatch(Exception):
    """A value does not fit a type hint; ``args[0]`` describes the expected type."""


def is_interpolation(value: Any) -> bool:
    """Whether ``value`` is an OmegaConf ``${...}`` interpolation (its type is checked once resolved)."""
    return isinstance(value, str) and "${" in value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def describe(hint: Any) -> str:
    """``int`` -> ``an int``; ``float | None`` -> ``a float``; ``int | str`` -> ``an int or a string``."""
    if _is_union(hint):
        return " or ".join(describe(a) for a in typing.get_args(hint) if a is not _NONE_TYPE)
    names = {int: "an int", float: "a float", bool: "a bool (true or false)", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is list or typing.get_origin(hint) in (list, tuple):
        return "a list"
    if hint is dict or typing.get_origin(hint) is dict:
        return "a dict"
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + "|".join(m.name for m in hint)
    if dataclasses.is_dataclass(hint):
        return "a section"
    return getattr(hint, "__name__", str(hint))


def optional_of(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; ``X`` -> ``(X, False)`` (other unions are returned whole)."""
    if _is_union(hint) and _NONE_TYPE in typing.get_args(hint):
        rest = [a for a in typing.get_args(hint) if a is not _NONE_TYPE]
        return functools.reduce(operator.or_, rest), True
    return hint, False


def coerce(hint: Any, value: Any) -> Any:
    """``value`` converted to ``hint`` (``1`` -> ``1.0`` for a float, ``1e4`` -> ``10000`` for an int),
    or raise."""
    if hint is Any or hint is object:
        return value
    inner, optional = optional_of(hint)
    if value is None:
        if optional:
            return None
        raise _Mismatch(describe(hint))
    if optional:
        return coerce(inner, value)
    if is_interpolation(value) or value == MISSING:
        return value
    if _is_union(hint):
        options = typing.get_args(hint)
        for opt in options:
            if type(value) is opt:
                return value
        for opt in options:
            try:
                return coerce(opt, value)
            except _Mismatch:
                pass
        raise _Mismatch(describe(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[str(value).strip().lower()]
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is list or typing.get_origin(hint) in (list, tuple):
        if isinstance(value, (list, tuple, ListConfig)):
            args = typing.get_args(hint)
            return [coerce(args[0], v) for v in value] if args else list(value)
    elif hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, (dict, DictConfig)):
            return value
    elif isinstance(hint, type) and issubclass(hint, Enum):
        if isinstance(value, hint):
            return value
        if isinstance(value, str) and value in hint.__members__:
            return hint[value]
    else:
        return value  # a type this module does not know: OmegaConf validates it
    raise _Mismatch(describe(hint))


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of a dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def schema_of(node: Any) -> type | None:
    """The dataclass a structured DictConfig node follows; ``None`` for a free-form dict (or a list)."""
    if not isinstance(node, DictConfig):
        return None
    cls = OmegaConf.get_type(node)
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def _deleted_value(schema: type | None, name: str) -> Any:
    """What ``~key`` sets a schema field to when the field declares it (``metadata["on_delete"]``, a
    factory: e.g. ``~model.optim.sched`` is NeMo's "no scheduler", a constant learning rate), else None."""
    for f in dataclasses.fields(schema) if schema is not None else ():
        if f.name == name and "on_delete" in f.metadata:
            return f.metadata["on_delete"]()
    return None


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else str(text)


class ConfigTree:
    """An OmegaConf tree built from ``schema_cls``, edited only through type- and key-checked operations."""

    def __init__(self, schema_cls: type):
        if not dataclasses.is_dataclass(schema_cls):
            raise TypeError(f"{schema_cls!r} is not a dataclass")
        self.schema_cls = schema_cls
        self.cfg: DictConfig = OmegaConf.structured(schema_cls)
        self.defaults: DictConfig = OmegaConf.structured(schema_cls)
        self.origins: dict[str, str] = {}

    # ---- lookup helpers ----
    def origin_of(self, key: str | None) -> str | None:
        """Where the value of ``key`` (or of its nearest set parent) came from; ``None`` for a default."""
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key.rpartition(".")[0]
        return None

    def free_form_sections(self) -> list[str]:
        """Full keys of the dict-typed fields, where ``+key=`` may add entries."""
        out: list[str] = []

        def walk(node: DictConfig, prefix: str) -> None:
            cls = schema_of(node)
            if cls is None:
                return
            for name, hint in field_hints(cls).items():
                child = node._get_node(name)
                if isinstance(child, DictConfig):
                    if schema_of(child) is None:
                        out.append(_join(prefix, name))
                    else:
                        walk(child, _join(prefix, name))
                elif optional_of(hint)[0] is dict or typing.get_origin(optional_of(hint)[0]) is dict:
                    out.append(_join(prefix, name))

        walk(self.defaults, "")
        return out

    def _all_schema_keys(self) -> list[str]:
        out: list[str] = []

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, DictConfig):
                for k in node:
                    full = _join(prefix, k)
                    out.append(full)
                    walk(node._get_node(k), full)

        walk(self.defaults, "")
        return out

    def _no_such_key(self, parent: DictConfig, key: str, full: str, source: str | None, extra: str = "",
                     ) -> ConfigError:
        prefix = full.rpartition(".")[0]
        siblings = [str(k) for k in parent]
        close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
        suggestion = _join(prefix, close[0]) if close else None
        if suggestion is None:  # e.g. model.lr -> model.optim.lr, trainer.max_steps -> trainer.sft.max_steps
            top = full.split(".")[0] + "." if "." in full else ""
            same_leaf = [k for k in self._all_schema_keys()
                         if k.rpartition(".")[2] == key and k.startswith(top)]
            same_leaf.sort(key=lambda k: (not k.startswith(prefix + "."), len(k)))
            suggestion = same_leaf[0] if same_leaf else None
        msg = f"{full}: no such key"
        if suggestion:
            msg += f" (did you mean {suggestion}?)"
        elif siblings and len(siblings) <= 12:
            msg += f" (keys of {prefix or 'the top level'}: {', '.join(siblings)})"
        elif siblings:
            msg += f" (conf/base.yaml lists every key of {prefix or 'the config'})"
        return ConfigError(msg + extra, key=full, source=source)

    def _child_exists(self, parent: Any, key: str) -> bool:
        if isinstance(parent, ListConfig):
            return key.lstrip("-").isdigit() and -len(parent) <= int(key) < len(parent)
        cls = schema_of(parent)
        if cls is not None:
            return key in field_hints(cls)
        return key in list(parent)  # `in` on a DictConfig is false for ??? / broken values

    def _child(self, parent: Any, key: str) -> Any:
        return parent._get_node(int(key) if isinstance(parent, ListConfig) else key)

    def _walk(self, parts: list[str], source: str | None, create: bool, op_hint: str,
              target: str | None = None) -> Any:
        """The container at ``parts``; missing free-form levels are created when ``create``."""
        node: Any = self.cfg
        for i, part in enumerate(parts):
            full = ".".join(parts[: i + 1])
            if not isinstance(node, (DictConfig, ListConfig)) or node._is_none():
                raise ConfigError(f"{full}: its parent is not a section, so it has no keys", key=full,
                                  source=source)
            if not self._child_exists(node, part):
                if create and isinstance(node, DictConfig) and schema_of(node) is None:
                    node[part] = {}
                else:
                    raise self._missing_key_error(node, part, full, source, op_hint, target)
            node = self._child(node, part)
        if not isinstance(node, (DictConfig, ListConfig)) or node._is_none():
            full = ".".join(parts)
            raise ConfigError(f"{full} is not a section, so it has no keys (set {full}=... instead)",
                              key=full, source=source)
        return node

    def _missing_key_error(self, parent: Any, key: str, full: str, source: str | None,
                           op_hint: str, target: str | None = None) -> ConfigError:
        if isinstance(parent, ListConfig):
            return ConfigError(f"{full}: no such list index (the list has {len(parent)} items)", key=full,
                               source=source)
        if schema_of(parent) is None:  # free-form dict: a new key needs +key=
            extra = f"; to add it use +{target or full}=..." if op_hint == "set" else ""
            return self._no_such_key(parent, key, full, source, extra)
        extra = ""
        if op_hint in ("add", "upsert"):
            extra = ("; +key= adds keys only inside the free-form sections "
                     f"({', '.join(self.free_form_sections()) or 'none'})")
        return self._no_such_key(parent, key, full, source, extra)

    # ---- edits ----
    def set(self, key: str, value: Any, source: str | None, mode: str = "set") -> None:
        """``mode``: ``set`` (key=v: must exist), ``add`` (+key=v: must not exist), ``upsert`` (++key=v)."""
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"{key!r} is not a valid key (empty part between dots)", key=key, source=source)
        parent = self._walk(parts[:-1], source, create=mode != "set", op_hint=mode, target=key)
        last = parts[-1]
        exists = self._child_exists(parent, last)
        free = isinstance(parent, DictConfig) and schema_of(parent) is None
        if not exists and (mode == "set" or not free):
            raise self._missing_key_error(parent, last, key, source, mode)
        if exists and mode == "add":
            raise ConfigError(f"{key} already exists: override it with {key}=... (or ++{key}=...)", key=key,
                              source=source)
        self._assign(parent, last, value, key, lambda _full: source)

    def delete(self, key: str, source: str | None, expect: Any = dataclasses.MISSING) -> None:
        """``~key``: remove an entry of a free-form dict, or reset a schema field to its schema default.

        With ``expect`` (``~key=value``) the current value must equal it, as in Hydra.
        """
        parts = key.split(".")
        parent = self._walk(parts[:-1], source, create=False, op_hint="delete")
        last = parts[-1]
        if not self._child_exists(parent, last):
            err = self._missing_key_error(parent, last, key, source, "delete")
            err.message = f"cannot delete {err.message}"
            raise err
        if expect is not dataclasses.MISSING:
            node = self._child(parent, last)
            current = (OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig))
                       else node._value())
            if current != expect:
                raise ConfigError(f"~{key}={expect!r}: the current value is {current!r}, not {expect!r}",
                                  key=key, source=source)
        try:
            if isinstance(parent, ListConfig):
                del parent[int(last)]
            elif schema_of(parent) is None:
                del parent[last]
            elif (deleted := _deleted_value(schema_of(parent), last)) is not None:
                parent[last] = OmegaConf.structured(deleted)  # the field says what "absent" means
            else:  # a schema field cannot disappear: it goes back to its default
                dparent = self.defaults
                for part in parts[:-1]:
                    dparent = dparent._get_node(part)
                dnode = dparent._get_node(last)
                parent[last] = (copy.deepcopy(dnode) if isinstance(dnode, (DictConfig, ListConfig))
                                else dnode._value())
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot delete {key}: {_first_line(e.msg)}", key=key, source=source) from None
        for k in [k for k in self.origins if k == key or k.startswith(key + ".")]:
            del self.origins[k]
        if source:
            self.origins[key] = source

    def merge(self, data: dict, source_of: SourceFn, prefix: str = "") -> None:
        """Deep-merge a nested dict (a YAML file's content) into the tree; keys must exist outside
        free-form dicts."""
        parent = self.cfg if not prefix else self._walk(prefix.split("."), source_of(prefix), False, "set")
        for key, value in data.items():
            self._merge_key(parent, str(key), value, _join(prefix, key), source_of)

    def _merge_key(self, parent: DictConfig, key: str, value: Any, full: str, source_of: SourceFn) -> None:
        if schema_of(parent) is not None and not self._child_exists(parent, key):
            raise self._no_such_key(parent, key, full, source_of(full))
        self._assign(parent, key, value, full, source_of)

    def _assign(self, parent: Any, key: str, value: Any, full: str, source_of: SourceFn) -> None:
        """Store ``value`` at ``parent[key]``; dicts merge into existing sections key by key."""
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=False)
        cls = schema_of(parent)
        hint = field_hints(cls)[key] if cls is not None else Any
        inner = optional_of(hint)[0]
        current = self._child(parent, key) if self._child_exists(parent, key) else None
        section = isinstance(current, DictConfig) and not current._is_none()
        try:
            if isinstance(value, dict) and (section or dataclasses.is_dataclass(inner)):
                if not section:  # an optional section that is null: start from its schema defaults
                    parent[key] = OmegaConf.structured(inner) if dataclasses.is_dataclass(inner) else {}
                    current = self._child(parent, key)
                for k, v in value.items():
                    self._merge_key(current, str(k), v, _join(full, k), source_of)
                return
            if dataclasses.is_dataclass(inner) and not is_interpolation(value) and value is not None:
                raise ConfigError(f"{full}={value!r} is not a section: set its keys, e.g. {full}.<key>=...",
                                  key=full, source=source_of(full))
            try:
                value = coerce(hint, value)
            except _Mismatch as m:
                if value is None:
                    msg = f"{full}=null is not allowed: it must be {m.args[0]}"
                else:
                    msg = f"{full}={value!r} is not {m.args[0]}"
                raise ConfigError(msg, key=full, source=source_of(full)) from None
            if isinstance(parent, ListConfig):
                parent[int(key)] = value
            else:
                parent[key] = value
        except OmegaConfBaseException as e:
            raise ConfigError(f"{full}: {_first_line(e.msg)}", key=full, source=source_of(full)) from None
        src = source_of(full)
        if src:
            self.origins[full] = src

    # ---- result ----
    def to_object(self) -> Any:
        """The schema instance (interpolations resolved); a missing or unresolvable value is a
        ``ConfigError``."""
        try:
            return OmegaConf.to_object(self.cfg)
        except MissingMandatoryValue as e:
            key = e.full_key
            raise ConfigError(f"{key} is required: set it in the YAML file or with {key}=... "
                              "on the command line", key=key, source=self.origin_of(key)) from None
        except InterpolationResolutionError as e:
            key = e.full_key
            raise ConfigError(f"{key}: {_first_line(e.msg)} (fix the ${{...}} interpolation)", key=key,
                              source=self.origin_of(key)) from None
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            raise ConfigError(f"{key}: {_first_line(e.msg)}", key=key, source=self.origin_of(key)) from None
