"""Steering at inference: attribute values -> the SteerLM prompt -> a response (seed 001, "Run Inference").

The seed's helper ``get_answer(question, max_tokens, values)`` builds::

    <extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{question}\\n<extra_id_1>Assistant\\n<extra_id_2>{values}\\n

with ``values = encode_labels(OrderedDict(quality=4, toxicity=0, ...))`` = ``"quality:4,toxicity:0,..."``,
sends it to ``PUT /generate`` (greedy, ``end_strings=["<extra_id_1>"]``) and keeps the text after the
prompt. Here:

* ``parse_values("quality:4,humor:0")``: the user's values, validated (unknown names, repeats, non-integers
  and values outside 0..4 are ``SteerError``s naming them) and completed with ``DEFAULT_VALUES`` (the seed's
  OrderedDict) for the attributes not given, in ``STEERLM_ATTRIBUTES`` order (the order annotation writes
  labels in, so the label line is one the model was trained on).
* ``steer_prompt(user_text, values, system=None)``: the prompt above, built with ``nemo_chat.chat_prompt``,
  the function attribute-conditioned SFT renders training records with (byte-identical label line).
* ``steer(prompt, values, backend=... | url=..., sampling=...)``: one response. The continuation is the
  returned sentence after ``len(prompt)`` characters of the *formatted* prompt (the seed slices with the
  length of its unformatted template, ``{question}`` and ``{values}`` placeholders included, so its answer
  starts with the prompt's tail whenever the question and values are longer than the placeholders); unless
  ``raw=True`` the stop string and the end-of-turn newline before it are removed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Optional, Union

from megatron_align.config.data import ChatPromptTokens
from megatron_align.config.errors import UserError
from megatron_align.config.stages.steerlm import END_STRING
from megatron_align.data.nemo_chat import Turn, chat_prompt
from megatron_align.data.steerlm.attributes import (
    LIKERT_MAX,
    STEERLM_ATTRIBUTES,
    LabelError,
    check_values,
    label_pairs,
)
from megatron_align.data.steerlm.records import SYSTEM_PROMPT

if TYPE_CHECKING:
    from megatron_align.generation.interface import GenerationBackend, SamplingParams

DEFAULT_VALUES: OrderedDict[str, int] = OrderedDict(zip(STEERLM_ATTRIBUTES, (4, 0, 0, 0, 4, 4, 4, 4, 4)))
"""The seed's ``values`` (maximum quality; no toxicity, humor or creativity; helpful, correct, coherent,
complex and verbose): what an attribute the user does not give is set to."""
VALUE_RANGE = (0, LIKERT_MAX)
"""Steering values are integers on the 0..4 Likert scale of the labels SFT trained on."""

Values = Union[str, Mapping[str, int], None]


class SteerError(UserError, ValueError):
    """Bad steering input (values, prompt, sampling, server answer): one line, exit status 2."""

    prefix = "steer error"


def _steering_range(_name: str) -> tuple[int, int]:
    return VALUE_RANGE


def parse_values(values: Values = None) -> OrderedDict[str, int]:
    """All nine attribute values, in ``STEERLM_ATTRIBUTES`` order, from ``"quality:4,humor:0"`` or a mapping
    (``None`` / ``""``: the defaults). Missing attributes take ``DEFAULT_VALUES``; every problem is a
    ``SteerError`` naming the attribute(s) (parsing and checks: ``data.steerlm.attributes``)."""
    if values is None or (isinstance(values, str) and not values.strip()):
        return OrderedDict(DEFAULT_VALUES)
    try:
        if isinstance(values, str):
            pairs = label_pairs(values, strip=True)
        elif isinstance(values, Mapping):
            pairs = list(values.items())
        else:
            raise SteerError(f"values: expected 'name:value,...' or a mapping, got {type(values).__name__}")
        given = check_values(pairs, _steering_range)
    except LabelError as e:
        raise SteerError(str(e)) from None
    return OrderedDict((name, given.get(name, DEFAULT_VALUES[name])) for name in STEERLM_ATTRIBUTES)


def encode_labels(values: Values = None) -> str:
    """The seed's ``encode_labels``: ``"quality:4,toxicity:0,...,verbosity:4"`` (all nine, canonical order,
    after ``parse_values``)."""
    return ",".join(f"{name}:{value}" for name, value in parse_values(values).items())


def steer_prompt(user_text: str, values: Values = None, system: Optional[str] = None,
                 tokens: Optional[ChatPromptTokens] = None) -> str:
    """The seed's prompt for ``user_text`` steered by ``values`` (``system=None``: the seed's system prompt;
    ``tokens``: the chat markers, default ``<extra_id_0/1/2>`` and ``\\n``)."""
    if not isinstance(user_text, str) or not user_text.strip():
        raise SteerError("prompt: empty (give the user's question)")
    label = encode_labels(values)
    return chat_prompt(SYSTEM_PROMPT if system is None else system, [Turn("User", user_text)], tokens,
                       label=label)


def steer_sampling(tokens_to_generate: Optional[int] = None, greedy: bool = True, **kwargs) -> SamplingParams:
    """``SamplingParams`` of the seed's steering request: greedy, ``top_k=1``, ``end_strings`` the turn marker
    (the rest, and ``tokens_to_generate`` when None, the shared defaults); ``kwargs`` override any field."""
    from megatron_align.generation.interface import SamplingParams

    fields = {"top_k": 1 if greedy else 0, "end_strings": [END_STRING]} | kwargs
    if tokens_to_generate is not None:
        fields["tokens_to_generate"] = tokens_to_generate
    params = SamplingParams(greedy=greedy, **fields)
    try:
        params.validate()
    except ValueError as e:
        raise SteerError(f"sampling: {e}") from None
    return params


def steer_batch(prompts: Sequence[str], values: Values = None, *,
                backend: Union[GenerationBackend, str, None] = None, url: Optional[str] = None,
                sampling: Optional[SamplingParams] = None, system: Optional[str] = None, raw: bool = False,
                timeout: float = 600.0) -> list[str]:
    """``steer`` for several user prompts (one request / one ``generate`` call)."""
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.remote import generate_http
    from megatron_align.generation.text import clean_response, generate_local

    texts = [steer_prompt(p, values, system) for p in prompts]
    params = sampling if sampling is not None else steer_sampling()
    if (backend is None) == (url is None):
        raise SteerError("give exactly one of url (a running generation server) or backend (a checkpoint "
                         "directory or a generation backend)")
    if url is not None:
        outs = generate_http(url, texts, params, timeout=timeout)
    else:
        if isinstance(backend, str) or hasattr(backend, "__fspath__"):
            backend = load_backend(backend)
        outs = generate_local(backend, texts, params)
    return outs if raw else [clean_response(o, params.end_strings) for o in outs]


def steer(prompt: str, values: Values = None, *, backend: Union[GenerationBackend, str, None] = None,
          url: Optional[str] = None, sampling: Optional[SamplingParams] = None, system: Optional[str] = None,
          raw: bool = False, timeout: float = 600.0) -> str:
    """The model's answer to ``prompt`` steered by ``values``, from the generation server at ``url``
    (``http://host:port``) or from ``backend`` (a ``GenerationBackend`` or a checkpoint directory)."""
    return steer_batch([prompt], values, backend=backend, url=url, sampling=sampling, system=system, raw=raw,
                       timeout=timeout)[0]
