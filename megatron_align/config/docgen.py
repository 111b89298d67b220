"""Field docstrings of the schema dataclasses, and the commented YAML (``conf/base.yaml``) made from them.

A field's docstring is the string literal right after it in the class body; Python drops those at runtime,
so they are read back from the source with ``ast``. Regenerate the reference file with::

    python -m megatron_align.config.docgen > conf/base.yaml
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import re
import sys
import textwrap
from typing import Any

import yaml

from megatron_align.config.tree import field_hints, optional_of

_WIDTH = 110


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, including inherited fields (a subclass's own text wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.name in docs}


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _comment(text: str, indent: str) -> list[str]:
    text = re.sub(r"``([^`]*)``", r"`\1`", text).replace("`None`", "`null`")
    return textwrap.wrap(text, width=_WIDTH, initial_indent=indent + "# ", subsequent_indent=indent + "# ")


def commented_yaml(obj: Any, indent: str = "") -> str:
    """YAML of a schema instance (or class, for its defaults) with each field's docstring above its key."""
    if isinstance(obj, type):
        obj = obj()
    lines: list[str] = []
    docs = field_docs(type(obj))
    hints = field_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if lines and dataclasses.is_dataclass(optional_of(hints[f.name])[0]) and not indent:
            lines.append("")
        lines += _comment(docs.get(f.name, ""), indent) if f.name in docs else []
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            lines.append(commented_yaml(value, indent + "  ").rstrip("\n"))
        elif isinstance(value, dict) and value:
            body = yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip("\n")
            lines.append(f"{indent}{f.name}:")
            lines += [indent + "  " + line for line in body.splitlines()]
        else:
            lines.append(f"{indent}{f.name}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print ``conf/base.yaml``: every key of ``RunConfig`` with its default and its docstring."""
    from megatron_align.config.schema import RunConfig

    header = ("# Every key of megatron_align's RunConfig, with its default. "
              "Generated from the dataclass schemas\n"
              "# (megatron_align/config/), which own the defaults:\n"
              "#   python -m megatron_align.config.docgen > conf/base.yaml\n"
              "# Stage configs extend this (trainer.<stage>.*, model.data.*).\n\n")
    sys.stdout.write(header + commented_yaml(RunConfig))


if __name__ == "__main__":
    main()
