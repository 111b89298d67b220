"""Chat and prompt templates: the exact text of NeMo's extra_id template, answer-only masks checked token by
token, and whole-string tokenization that agrees with the prompt generation will see."""

import json

import numpy as np
import pytest

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data import (
    JinjaChatTemplate,
    PromptTemplate,
    RecordError,
    SampleRules,
    SFTFile,
    Turn,
    chat_prompt,
    encode_chat,
    encode_rendered,
    parse_chat_record,
    render_chat,
)
from tests.unit.data_common import (
    SEED_SYSTEM,
    SEED_VALUES,
    SFT_FIXTURE,
    hf_tokenizer,
    sp_tokenizer,
    write_jsonl,
)

STEERLM_RECORD = {
    "system": "SYS",
    "mask": "User",
    "type": "VALUE_TO_TEXT",
    "conversations": [
        {"from": "User", "value": "Q1", "label": None},
        {"from": "Assistant", "value": "A1", "label": "quality:4,toxicity:0"},
        {"from": "User", "value": "Q2"},
        {"from": "Assistant", "value": "A2"},
    ],
}


def test_extra_id_template_text_and_targets():
    r = render_chat(parse_chat_record(STEERLM_RECORD))
    assert r.text == ("<extra_id_0>System\nSYS\n"
                      "<extra_id_1>User\nQ1\n"
                      "<extra_id_1>Assistant\n<extra_id_2>quality:4,toxicity:0\nA1\n"
                      "<extra_id_1>User\nQ2\n"
                      "<extra_id_1>Assistant\nA2\n"
                      "<extra_id_1>")
    # answers with their end of turn, plus the turn-start marker that closes each answer; no label, no header
    assert r.target_text() == ["A1\n<extra_id_1>", "A2\n<extra_id_1>"]


def test_label_line_reaches_the_prompt_exactly_as_the_seed_shows():
    question = "Write a poem on NVIDIA in the style of Shakespeare"
    seed_prompt = ("<extra_id_0>System\nA chat between a curious user and an artificial intelligence "
                   "assistant. The assistant gives helpful, detailed, and polite answers to the user's "
                   "questions.\n"
                   f"<extra_id_1>User\n{question}\n<extra_id_1>Assistant\n<extra_id_2>{SEED_VALUES}\n"
                   )
    assert chat_prompt(SEED_SYSTEM, [Turn("User", question)], label=SEED_VALUES) == seed_prompt
    # a VALUE_TO_TEXT training record reads exactly that text before its (trained) answer
    rec = parse_chat_record({"system": SEED_SYSTEM, "mask": "User", "type": "VALUE_TO_TEXT",
                             "conversations": [
        {"from": "User", "value": question},
        {"from": "Assistant", "value": "In days of yore", "label": SEED_VALUES}]})
    r = render_chat(rec)
    assert r.text[: r.targets[0][0]] == seed_prompt
    assert r.target_text() == ["In days of yore\n<extra_id_1>"]


def test_turn_without_label_has_no_label_line_and_no_type_ignores_labels():
    rec = dict(STEERLM_RECORD, type=None)
    assert "<extra_id_2>" not in render_chat(parse_chat_record(rec)).text
    rec = parse_chat_record(dict(STEERLM_RECORD))
    assert render_chat(rec).text.count("<extra_id_2>") == 1  # only the labelled turn


def test_custom_chat_prompt_tokens():
    tokens = ChatPromptTokens(system_turn_start="\x00", turn_start="\x11", label_start="\x12",
                              end_of_turn="\n", end_of_name="\n")
    r = render_chat(parse_chat_record(STEERLM_RECORD), tokens)
    assert r.text.startswith("\x00System\nSYS\n\x11User\nQ1\n\x11Assistant\n\x12quality:4,toxicity:0\nA1\n")
    assert r.target_text() == ["A1\n\x11", "A2\n\x11"]


def test_text_to_value_trains_the_label_not_the_response():
    rec = parse_chat_record({"system": "", "type": "TEXT_TO_VALUE", "conversations": [
        {"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A", "label": "quality:4"}]})
    r = render_chat(rec)
    assert r.text == ("<extra_id_0>System\n\n<extra_id_1>User\nQ\n<extra_id_1>Assistant\nA\n"
                      "<extra_id_2>quality:4\n<extra_id_1>")
    assert r.target_text() == ["quality:4\n<extra_id_1>"]


def test_first_turn_answer_is_context_and_all_user_records_have_no_target():
    rec = parse_chat_record({"conversations": [{"from": "Assistant", "value": "Hi"},
                                               {"from": "User", "value": "Q"},
                                               {"from": "Assistant", "value": "A"}]})
    assert render_chat(rec).target_text() == ["A\n<extra_id_1>"]
    rec = parse_chat_record({"conversations": [{"from": "User", "value": "only a question"}]})
    assert render_chat(rec).targets == ()


def _token_classes(tok, text, ids_offsets, char_target):
    ids, offsets = ids_offsets
    out = []
    for a, b in offsets:
        b = max(b, a + 1)
        out.append(bool(char_target[a:b].any()))
    return out


def test_answer_only_mask_token_by_token():
    tok = sp_tokenizer()
    rec = parse_chat_record(STEERLM_RECORD)
    r = render_chat(rec)
    enc = encode_rendered(r, tok, add_eos=True)
    ids, mask = enc.ids.tolist(), enc.target_mask.tolist()
    assert ids[:-1] == tok.text_to_ids(r.text)  # whole-string tokenization, plus eos
    assert ids[-1] == tok.eos_id and mask[-1]  # eos after the closing marker is trained
    # independent character labelling from the template rules: find each answer and its closing marker
    text = r.text
    char_target = np.zeros(len(text), dtype=bool)
    for answer in ("A1\n<extra_id_1>", "A2\n<extra_id_1>"):
        start = text.index(answer)
        char_target[start:start + len(answer)] = True
    _, offsets = tok.text_to_ids_with_offsets(text)
    assert mask[:-1] == _token_classes(tok, text, (ids, offsets), char_target)
    # and by token identity: which markers are trained
    t1, t2, t0 = (tok.token_to_id(t) for t in ("<extra_id_1>", "<extra_id_2>", "<extra_id_0>"))
    marks = [(i, m) for i, m in zip(ids, mask) if i in (t0, t1, t2)]
    assert marks == [(t0, False), (t1, False), (t1, False), (t2, False), (t1, True), (t1, False), (t1, True)]
    # every trained token's text lies inside an answer; context tokens spell the rest
    trained_text = "".join(text[a:b] for (a, b), m in zip(offsets, mask) if m)
    assert trained_text == "A1\n<extra_id_1>A2\n<extra_id_1>"
    for piece in ("System", "SYS", "User", "Q1", "Assistant", "quality:4,toxicity:0"):
        start = text.index(piece)
        end = start + len(piece)
        assert not any(m for (a, b), m in zip(offsets, mask) if a < end and max(b, a + 1) > start)


def test_whole_string_tokens_agree_with_the_generation_prompt_on_real_chats():
    """For every answer of the fixture, the tokens before it equal the tokenized generation prompt."""
    tok = sp_tokenizer()
    checked = 0
    for line in SFT_FIXTURE.read_text().splitlines():
        rec = parse_chat_record(json.loads(line))
        r = render_chat(rec)
        enc = encode_rendered(r, tok)
        assert enc.boundary_merges == 0
        ids = enc.ids.tolist()
        _, offsets = tok.text_to_ids_with_offsets(r.text)
        for (start, _), i in zip(r.targets, rec.answer_turns()):
            prompt = chat_prompt(rec.system, rec.turns[:i])
            assert r.text[:start] == prompt
            k = sum(1 for a, _ in offsets if a < start)  # tokens before the answer
            assert ids[:k] == tok.text_to_ids(prompt)
            assert enc.target_mask[k] and not enc.target_mask[k - 1]
            checked += 1
    assert checked >= 50


def test_piecewise_tokenization_is_not_whole_string_tokenization():
    """Why templates tokenize whole strings: sentencepiece's dummy prefix makes pieces differ."""
    tok = sp_tokenizer()
    r = render_chat(parse_chat_record(STEERLM_RECORD))
    pieces = ["<extra_id_0>System\nSYS\n", "<extra_id_1>User\n", "Q1\n"]
    assert [i for p in pieces for i in tok.text_to_ids(p)] != tok.text_to_ids("".join(pieces))
    ids, mask = encode_chat(STEERLM_RECORD, tok)
    assert ids == tok.text_to_ids(r.text) and len(mask) == len(ids)


def test_tokenizer_jinja_chat_template():
    tok = hf_tokenizer()
    assert tok.chat_template  # train_hf_bpe writes the SteerLM template into tokenizer_config.json
    path_rec = dict(STEERLM_RECORD, type=None)
    rec = parse_chat_record(path_rec)
    tmpl = JinjaChatTemplate.from_tokenizer(tok)
    r = tmpl.render(rec)
    assert r.text == render_chat(rec).text[: -len("<extra_id_1>")]  # same turns, no closing marker
    assert r.target_text() == ["A1\n", "A2\n"]
    assert r.text[: r.targets[0][0]] == tmpl.prompt("SYS", rec.turns[:1])
    enc = encode_rendered(r, tok, add_eos=True)
    assert enc.ids.tolist()[:-1] == tok.text_to_ids(r.text) and enc.target_mask[-1]


def test_literal_chatml_template_and_non_prefix_stable_template():
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rec = parse_chat_record(STEERLM_RECORD)
    r = JinjaChatTemplate(chatml).render(rec)
    assert r.text.startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n")
    assert r.target_text() == ["A1<|im_end|>\n", "A2<|im_end|>\n"]
    unstable = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages | length }}"
    with pytest.raises(RecordError, match=r"conversations\[1\]: the chat template does not render"):
        JinjaChatTemplate(unstable).render(rec)


def test_prompt_template_input_output_and_exo_prompt_chosen(tmp_path):
    tok = sp_tokenizer()
    t = PromptTemplate("{input} {output}", "output")
    r = t.render({"input": "1 2 3", "output": "3 2 1"})
    assert r.text == "1 2 3 3 2 1" and r.target_text() == [" 3 2 1"]
    assert t.prompt({"input": "1 2 3", "output": ""}) == "1 2 3"
    enc = encode_rendered(r, tok, add_eos=True)
    k = int(np.flatnonzero(enc.target_mask)[0])
    assert enc.ids[:k].tolist() == tok.text_to_ids("1 2 3") and enc.boundary_merges == 0
    # EXO's {"prompt", "chosen"} (preference records' "rejected" is ignored) is found without configuration
    path = write_jsonl(tmp_path / "exo.jsonl", [
        {"prompt": "Human: hi\n\nAssistant:", "chosen": " Hello there.", "rejected": " Go away."}])
    f = SFTFile(path, tok, SampleRules(chat=False))
    assert f.prompt_template == PromptTemplate("{prompt}{chosen}", "chosen")
    s = f.sample(0)
    trained = tok.ids_to_text(s.input_ids[s.target_mask].tolist())
    assert trained.strip() == "Hello there." and s.input_ids[-1] == tok.eos_id


def test_kd_fixture_with_nemo_default_template():
    from tests.unit.data_common import KD_FIXTURE

    tok = sp_tokenizer()
    f = SFTFile(KD_FIXTURE, tok, SampleRules(chat=False), use_index_cache=False)
    assert f.prompt_template == PromptTemplate("{input} {output}", "output")
    s = f.sample(0)
    assert tok.ids_to_text(s.input_ids[~s.target_mask].tolist()) == "1 2 3 4 5"
    assert tok.ids_to_text(s.input_ids[s.target_mask].tolist()).strip() == "5 4 3 2 1"


@pytest.mark.parametrize("make", [sp_tokenizer, hf_tokenizer])
def test_token_offsets_cover_the_text(make):
    tok = make()
    text = "<extra_id_0>System\nhéllo 🙂 a€b  日本語\n<extra_id_1>x"
    ids, offsets = tok.text_to_ids_with_offsets(text)
    assert ids == tok.text_to_ids(text) and len(offsets) == len(ids)
    covered = np.zeros(len(text), dtype=bool)
    for a, b in offsets:
        assert 0 <= a <= b <= len(text)
        covered[a:b] = True
    assert covered.all()
    assert [text[a:b] for (a, b), i in zip(offsets, ids) if i == tok.token_to_id("<extra_id_1>")] == [
        "<extra_id_1>"]


def test_sentencepiece_offsets_from_byte_offsets_match(monkeypatch):
    """Older sentencepiece releases give UTF-8 byte offsets only; the conversion agrees with the new API."""
    tok = sp_tokenizer()
    text = "a€b 🙂 héllo\n<extra_id_1>x  <extra_id_0>naïve 日本語"
    direct = tok.text_to_ids_with_offsets(text)
    real = tok._sp

    class OldSentencePiece:
        def encode(self, t, return_type=None):
            if return_type == "offset_mapping":
                raise ValueError("unknown return_type=offset_mapping")
            return real.encode(t, return_type=return_type)

    monkeypatch.setattr(tok, "_sp", OldSentencePiece())
    assert tok.text_to_ids_with_offsets(text) == direct
