"""The attribute-conditioned SFT record every SteerLM preprocessing script writes, key for key.

One JSON line per conversation, keys in this order (NeMo-Aligner's, so the bytes match)::

    {"conversations": [{"value": "...", "from": "User", "label": null},
                       {"value": "...", "from": "Assistant", "label": "quality:4,toxicity:0,..."}],
     "system": SYSTEM_PROMPT, "mask": "User", "type": "VALUE_TO_TEXT"}

Turn keys are ``value``, ``from``, then ``label``: ``null`` on user turns, the label string on rated answers.
An OASST answer that carries no labels at all has no ``label`` key.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""The system prompt of every SteerLM record and regression text (NeMo-Aligner's ``SYSTEM_PROMPT``)."""
USER = "User"
ASSISTANT = "Assistant"
CHAT_TYPE = "VALUE_TO_TEXT"
"""Records condition answers on their labels (``nemo_chat`` renders the label line before the answer)."""


def turn(role: str, value: str, label: str | None = None) -> dict:
    """A turn dict in NeMo-Aligner's key order (``value``, ``from``, ``label``)."""
    return {"value": value, "from": role, "label": label}


def sft_record(conversations: list[dict]) -> dict:
    """A SteerLM SFT record around ``conversations`` (key order as in the module docstring)."""
    return {"conversations": conversations, "system": SYSTEM_PROMPT, "mask": USER, "type": CHAT_TYPE}


def prompt_response_record(prompt: str, response: str, label: str) -> dict:
    """The single-exchange record of HelpSteer-style data: the user's prompt, then the rated response."""
    return sft_record([turn(USER, prompt), turn(ASSISTANT, response, label)])
