"""NeMo's extra_id chat template and answer-only loss masks for chat SFT records.

The template, as the SteerLM seed document writes it (``model.data.chat_prompt_tokens.*`` configure the three
markers; one string, wrapped here after the user turn)::

    <extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{user turn}\\n
    <extra_id_1>Assistant\\n[<extra_id_2>{label}\\n]{answer}\\n

Only assistant answers (and the turn end after them) are targets; the system prompt, user turns, role headers
and the label line are context.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatPromptTokens:
    """``model.data.chat_prompt_tokens.*``"""

    system_turn_start: str = "<extra_id_0>"
    turn_start: str = "<extra_id_1>"
    label_start: str = "<extra_id_2>"
    end_of_turn: str = "\n"
    end_of_name: str = "\n"


def encode_chat(record: dict, tokenizer, prompt_tokens: ChatPromptTokens = ChatPromptTokens(),
                add_eos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask (1 = trained) for one NeMo chat record."""
    t = prompt_tokens
    pieces: list[tuple[str, bool]] = [
        (f"{t.system_turn_start}System{t.end_of_name}{record.get('system', '')}{t.end_of_turn}", False)
    ]
    masked_role = record.get("mask", "User")
    for turn in record["conversations"]:
        role = turn["from"]
        header = f"{t.turn_start}{role}{t.end_of_name}"
        if role != masked_role and turn.get("label"):
            header += f"{t.label_start}{turn['label']}{t.end_of_turn}"
        pieces.append((header, False))
        pieces.append((f"{turn['value']}{t.end_of_turn}", role != masked_role))
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in pieces:
        piece_ids = tokenizer.text_to_ids(text)
        ids.extend(piece_ids)
        mask.extend([int(trained)] * len(piece_ids))
    if add_eos:
        ids.append(tokenizer.eos_id)
        mask.append(1)
    return ids, mask
