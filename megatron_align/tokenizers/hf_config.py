"""Reading and writing the side files of an HF tokenizer directory, without transformers.

``tokenizer_config.json`` and ``special_tokens_map.json`` name bos/eos/pad/unk (as strings, or as AddedToken
dicts ``{"content": ...}`` in older files) and extra special tokens (``additional_special_tokens`` in
transformers 4, ``extra_special_tokens`` in 5). The chat template is ``chat_template`` in
``tokenizer_config.json`` (a string, or a list of ``{"name", "template"}``) or, since transformers 4.43+/5,
a separate ``chat_template.jinja``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from megatron_align.tokenizers.base import TokenizerError

logger = logging.getLogger(__name__)

CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("bos", "eos", "pad", "unk")


@dataclass
class HFSideConfig:
    """What the side files say: named special tokens, extra special tokens, chat template, raw config."""

    named: dict[str, str] = field(default_factory=dict)
    """role (bos/eos/pad/unk) -> token text, with the file it came from in ``sources``."""
    sources: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    chat_template: str | None = None
    raw_config: dict[str, Any] = field(default_factory=dict)
    """The ``tokenizer_config.json`` contents, kept so that ``save`` writes back keys it does not own."""


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object at top level")
    return data


def _token_text(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f'{where}: expected a token string or {{"content": ...}}, got {value!r}')


def _extra_tokens(data: dict, path: str) -> list[str]:
    out = []
    for key in ("additional_special_tokens", "extra_special_tokens"):
        value = data.get(key) or []
        items = value.values() if isinstance(value, dict) else value
        out += [_token_text(v, f"{path}: {key}") for v in items]
    return [t for t in out if t]


def _default_template(template: Any) -> str | None:
    """A template string as is; from a list of named templates, the ``default`` one (else the first)."""
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template


def _chat_template(config: dict, directory: str) -> str | None:
    template = _default_template(config.get("chat_template"))
    if template is None and os.path.isfile(os.path.join(directory, CHAT_TEMPLATE_FILE)):
        with open(os.path.join(directory, CHAT_TEMPLATE_FILE)) as f:
            template = f.read()
    return template


def read_side_config(directory: str) -> HFSideConfig:
    """Parse the side files found in ``directory`` (all optional); the config file wins over the map."""
    out = HFSideConfig()
    for name in (SPECIAL_MAP_FILE, CONFIG_FILE):  # later files override earlier ones
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        data = _read_json(path)
        if name == CONFIG_FILE:
            out.raw_config = data
        for role in ROLES:
            text = _token_text(data.get(f"{role}_token"), f"{path}: {role}_token")
            if text is not None:
                out.named[role], out.sources[role] = text, path
        out.extra += [t for t in _extra_tokens(data, path) if t not in out.extra]
    out.chat_template = _chat_template(out.raw_config, directory)
    return out


def write_side_config(
    directory: str, named: dict[str, str], extra: list[str], chat_template: str | None, raw_config: dict
) -> None:
    """Write ``tokenizer_config.json`` and ``special_tokens_map.json`` as transformers reads them."""
    config = {
        k: v for k, v in raw_config.items() if k not in ("added_tokens_decoder", "extra_special_tokens")
    }
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("clean_up_tokenization_spaces", False)
    for role in ROLES:
        config.pop(f"{role}_token", None)
    special_map: dict[str, Any] = {f"{role}_token": named[role] for role in ROLES if role in named}
    if extra:
        special_map["additional_special_tokens"] = list(extra)
    config.update(special_map)
    if chat_template is not None:
        raw_template = raw_config.get("chat_template")
        keep_list = isinstance(raw_template, list) and _default_template(raw_template) == chat_template
        config["chat_template"] = raw_template if keep_list else chat_template  # keeps named variants
    else:
        config.pop("chat_template", None)
    for name, data in ((CONFIG_FILE, config), (SPECIAL_MAP_FILE, special_map)):
        with open(os.path.join(directory, name), "w") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
