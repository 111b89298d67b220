"""The one YAML dialect of config files and command-line values: safe loading, and where each key sits.

Loading never constructs Python objects (a ``SafeLoader`` subclass). Scalars follow YAML 1.2 as Hydra and
OmegaConf users expect: ``5e-6`` is a float, ``true``/``false`` are booleans but ``yes``/``on`` and dates stay
strings. A key written twice in one mapping is an error instead of a silent override.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class ConfigYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans and floats, no timestamps, and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader reports unhashable keys itself
            if key in seen and key != "<<":
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool",
                           "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ConfigYamlLoader.add_implicit_resolver(  # the float pattern of OmegaConf's own loader: 5e-6 is a float
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with :class:`ConfigYamlLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=ConfigYamlLoader)


def key_lines(text: str) -> dict[str, int]:
    """``{"model.optim.lr": 12, ...}``: the 1-based line of every mapping key of a YAML document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    full = f"{prefix}.{key_node.value}" if prefix else key_node.value
                    out.setdefault(full, key_node.start_mark.line + 1)
                    walk(value_node, full)

    walk(root, "")
    return out
