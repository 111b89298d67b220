"""Chat records rendered with a Jinja chat template (the tokenizer's own, from ``tokenizer_config.json``).

``model.data.chat_template=tokenizer`` (or a literal Jinja template) renders NeMo chat records the way HF
``apply_chat_template`` does: messages ``{"role": "system"|"user"|"assistant", "content": ...}`` (a turn's
SteerLM ``label`` is passed as ``message["label"]`` for templates that use it), ``bos_token`` / ``eos_token``
and ``add_generation_prompt`` in a sandboxed environment with ``trim_blocks`` / ``lstrip_blocks``, as
transformers sets it up.

Trained spans: answer ``i`` (same turns as the NeMo template trains, ``ChatRecord.answer_turns``) spans from
the end of ``render(messages[:i], add_generation_prompt=True)`` to the end of ``render(messages[:i + 1])`` -
the answer and whatever the template writes to close it (``<|im_end|>``, eos, ...). This needs a template
whose renderings of shorter conversations are prefixes of longer ones; a record for which that fails raises a
``RecordError`` naming the answer turn.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import ChatRecord, Turn
from megatron_align.data.tokenize import Rendered, TextBuilder

ROLE_NAMES = {"User": "user", "Assistant": "assistant"}
"""NeMo roles -> chat-template roles."""


def _raise(message: str):
    raise ValueError(message)


class JinjaChatTemplate:
    """A compiled Jinja chat template with the tokenizer's bos/eos text."""

    def __init__(self, template: str, bos_token: str | None = None, eos_token: str | None = None):
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover - jinja2 is an install requirement
            raise ImportError("model.data.chat_template needs jinja2: pip install jinja2") from e
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(template)
        except TemplateError as e:
            raise ValueError(f"the chat template is not valid Jinja: {e}") from None
        self.source = template
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""

    @classmethod
    def from_tokenizer(cls, tokenizer) -> JinjaChatTemplate:
        """The tokenizer's own chat template; ``ValueError`` when it ships none."""
        if not tokenizer.chat_template:
            raise ValueError(f"{tokenizer.path}: the tokenizer has no chat template (tokenizer_config.json "
                             "chat_template); use model.data.chat_template=nemo")
        return cls(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)

    def apply(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """Render ``messages`` (HF ``apply_chat_template(..., tokenize=False)``)."""
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token, eos_token=self.eos_token)

    @staticmethod
    def messages(system: str, turns: Sequence[Turn]) -> list[dict]:
        """HF-style messages of a NeMo conversation (no system message when ``system`` is empty)."""
        out = [{"role": "system", "content": system}] if system else []
        for t in turns:
            msg = {"role": ROLE_NAMES.get(t.role, t.role.lower()), "content": t.value}
            if t.label is not None:
                msg["label"] = t.label
            out.append(msg)
        return out

    def prompt(self, system: str, history: Sequence[Turn]) -> str:
        """The generation prompt for the next assistant turn after ``history``."""
        return self.apply(self.messages(system, history), add_generation_prompt=True)

    def render(self, record: ChatRecord) -> Rendered:
        """The record rendered whole, with each answer (and its closing text) as a target span."""
        msgs = self.messages(record.system, record.turns)
        offset = len(msgs) - len(record.turns)  # 1 with a system message
        try:
            full = self.apply(msgs)
            spans = []
            for i in record.answer_turns():
                head = self.apply(msgs[: offset + i], add_generation_prompt=True)
                upto = self.apply(msgs[: offset + i + 1])
                if not (upto.startswith(head) and full.startswith(upto)):
                    raise RecordError(f"conversations[{i}]", "the chat template does not render this "
                                      "conversation as a prefix of the longer one, so the answer cannot be "
                                      "located; use model.data.chat_template=nemo or a prefix-stable "
                                      "template")
                spans.append((len(head), len(upto)))
        except RecordError:
            raise
        except Exception as e:  # noqa: BLE001 - template code raises anything (raise_exception -> ValueError)
            raise RecordError("conversations", f"the chat template failed: {e}") from None
        out = TextBuilder()
        pos = 0
        for a, b in spans:
            out.add(full[pos:a])
            out.add(full[a:b], trained=True)
            pos = b
        out.add(full[pos:])
        return out.build()
