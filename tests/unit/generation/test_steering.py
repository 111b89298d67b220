"""SteerLM steering inputs: attribute values (parsing, defaults, errors), the generation prompt byte for byte
as the seed builds it, the request the seed sends, the CLI's one-line errors, and the bootstrap's prompt
records and config plumbing."""

import subprocess
import sys
from collections import OrderedDict

import pytest

from megatron_align.algorithms.steerlm import generation_prompt, max_quality_label, prompt_of, sample_record
from megatron_align.config.stages.steerlm import split_overrides, yaml_quote
from megatron_align.data.nemo_chat import parse_chat_record, render_chat
from megatron_align.generation.remote import endpoint, request_body
from megatron_align.generation.steering import (
    DEFAULT_VALUES,
    SteerError,
    encode_labels,
    parse_values,
    steer_prompt,
    steer_sampling,
)
from megatron_align.generation.text import clean_response
from tests.helpers import ROOT, _clean_env

SEED_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.")


# The seed's prompt construction and label encoding (001, "Create Python helper functions"), as written there.
def seed_prompt(question, values):
    prompt = (
        "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.\n"
        "<extra_id_1>User\n{question}\n<extra_id_1>Assistant\n<extra_id_2>{values}\n"
    )
    return prompt.format(question=question, values=values)


def seed_encode_labels(labels):
    return ",".join(f"{key}:{value}" for key, value in labels.items())


SEED_VALUES = OrderedDict([("quality", 4), ("toxicity", 0), ("humor", 0), ("creativity", 0),
                           ("helpfulness", 4), ("correctness", 4), ("coherence", 4), ("complexity", 4),
                           ("verbosity", 4)])


def test_defaults_are_the_seeds_values_and_encode_as_the_seed():
    assert DEFAULT_VALUES == SEED_VALUES and list(DEFAULT_VALUES) == list(SEED_VALUES)
    assert parse_values(None) == SEED_VALUES and parse_values("") == SEED_VALUES
    assert encode_labels(None) == seed_encode_labels(SEED_VALUES)
    assert encode_labels(SEED_VALUES) == seed_encode_labels(SEED_VALUES)


@pytest.mark.parametrize("question,given", [
    ("Write a poem on NVIDIA in the style of Shakespeare", ""),
    ("Tell me a joke.\nA short one, about cats: {not a placeholder}", "humor:4,verbosity:1"),
    ("¿Qué tal? 你好 — émoji 🙂", "toxicity:2, creativity:3 ,quality:0"),
])
def test_prompt_is_the_seeds_byte_for_byte(question, given):
    values = OrderedDict(SEED_VALUES)
    for item in filter(None, given.replace(" ", "").split(",")):
        name, raw = item.split(":")
        values[name] = int(raw)
    expected = seed_prompt(question, seed_encode_labels(values))
    assert steer_prompt(question, given) == expected
    assert steer_prompt(question, given).encode("utf-8") == expected.encode("utf-8")
    assert steer_prompt(question, dict(values)) == expected  # a mapping works too


def test_prompt_is_what_attribute_conditioned_sft_trained_before_the_answer():
    label = encode_labels("humor:3")
    rec = parse_chat_record({"system": SEED_SYSTEM, "mask": "User", "type": "VALUE_TO_TEXT",
                             "conversations": [{"from": "User", "value": "Q?"},
                                               {"from": "Assistant", "value": "An answer.", "label": label}]})
    rendered = render_chat(rec)
    prompt = steer_prompt("Q?", "humor:3")
    assert rendered.text == prompt + "An answer.\n<extra_id_1>"
    # everything before the answer is context, the answer (and its closing marker) is trained
    assert rendered.target_text() == ["An answer.\n<extra_id_1>"]
    assert rendered.targets[0][0] == len(prompt)


def test_values_parse_fill_defaults_in_canonical_order():
    got = parse_values("verbosity:1,humor:2")
    assert list(got) == list(SEED_VALUES)
    assert got == OrderedDict(SEED_VALUES, humor=2, verbosity=1)
    assert parse_values({"quality": 0}) == OrderedDict(SEED_VALUES, quality=0)
    assert encode_labels("coherence:0") == seed_encode_labels(OrderedDict(SEED_VALUES, coherence=0))


@pytest.mark.parametrize("text,needle", [
    ("humour:3", "unknown attribute 'humour'"),
    ("humour:3,quality:4,spam:1", "unknown attributes 'humour', 'spam'"),
    ("humor:7", "humor: value 7 is out of range 0..4"),
    ("quality:-1", "quality: value -1 is out of range 0..4"),
    ("humor:2.5", "humor: '2.5' is not an integer"),
    ("humor:high", "humor: 'high' is not an integer"),
    ("humor:", "humor: '' is not an integer"),
    ("humor:1,humor:2", "attribute 'humor' appears twice"),
    ("humor:1,", "empty item"),
    ("humor", "'humor' is not name:value"),
])
def test_bad_values_are_rejected_naming_them(text, needle):
    with pytest.raises(SteerError) as info:
        parse_values(text)
    assert needle in str(info.value)
    assert "\n" not in info.value.user_line() and info.value.user_line().startswith("steer error: ")


def test_mapping_values_are_checked_too():
    with pytest.raises(SteerError, match="humor: True is not an integer"):
        parse_values({"humor": True})
    with pytest.raises(SteerError, match="unknown attribute 'fun'"):
        parse_values({"fun": 1})
    with pytest.raises(SteerError, match="prompt: empty"):
        steer_prompt("  ", "")


def test_request_has_the_seeds_fields_and_the_answer_is_cut_after_the_prompt():
    params = steer_sampling(16)
    body = request_body(["p"], params)
    assert set(body) == {"sentences", "tokens_to_generate", "temperature", "add_BOS", "top_k", "top_p",
                         "greedy", "all_probs", "repetition_penalty", "min_tokens_to_generate", "end_strings"}
    assert body["greedy"] is True and body["top_k"] == 1 and body["end_strings"] == ["<extra_id_1>"]
    assert body["tokens_to_generate"] == 16 and body["all_probs"] is False
    assert "random_seed" in request_body(["p"], steer_sampling(4, greedy=False, random_seed=3))
    assert clean_response("An answer.\n<extra_id_1>", ["<extra_id_1>"]) == "An answer."
    assert clean_response("cut by the length lim", ["<extra_id_1>"]) == "cut by the length lim"
    assert clean_response("x\n\n<extra_id_1>", ["<extra_id_1>"]) == "x\n"  # only the end of turn goes
    assert endpoint("127.0.0.1:1427", "generate") == "http://127.0.0.1:1427/generate"
    assert endpoint("http://h:1/generate/", "generate") == "http://h:1/generate"
    with pytest.raises(SteerError, match="temperature"):
        steer_sampling(4, greedy=False, temperature=0.0)


def test_cli_bad_values_one_line_exit_2():
    """The console command itself (two processes at once): an unknown attribute, a value of 7."""
    cases = {"humour:3,quality:4": "steer error: unknown attribute 'humour' (expected one of quality,",
             "humor:7": "steer error: humor: value 7 is out of range 0..4"}
    cmd = [sys.executable, "-m", "megatron_align.cli", "steer", "--prompt", "Hello", "--url", "http://127.0.0.1:9"]
    procs = {values: subprocess.Popen([*cmd, "--values", values], cwd=ROOT, env=_clean_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for values in cases}
    for values, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1 and lines[0].startswith(cases[values]), err


@pytest.mark.parametrize("args,needle", [
    (["--checkpoint", "/nonexistent/ckpt", "--url", "http://127.0.0.1:9"], "not allowed with argument"),
    (["--checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt: no such checkpoint"),
    (["--url", "http://127.0.0.1:{port}", "--tokens-to-generate", "4"], "cannot reach the generation server"),
    (["--url", "http://127.0.0.1:9", "--top-k", "3"], "--top-k / --top-p go with --temperature"),
    (["--url", "http://127.0.0.1:9", "--temperature", "0"], "temperature: must be > 0"),
    ([], "one of the arguments --url --checkpoint is required"),
])
def test_cli_other_errors_one_line_exit_2(args, needle, capsys):
    from megatron_align.cli import main
    from tests.servers_common import free_port

    args = [a.format(port=free_port()) for a in args]
    with pytest.raises(SystemExit) as info:
        main(["steer", "--prompt", "Hello", *args])
    assert info.value.code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert out.out == "" and len(lines) == 1 and needle in lines[0], out.err


# ----------------------------------------------------------------------------------------------------------
# bootstrap plumbing
# ----------------------------------------------------------------------------------------------------------
def test_bootstrap_prompt_of_a_multi_turn_chat_and_its_record_render_as_sft_trains():
    label = max_quality_label("verbosity:1")
    assert label == seed_encode_labels(OrderedDict(SEED_VALUES, verbosity=1))
    record = {"system": "Be brief.", "mask": "User", "type": "VALUE_TO_TEXT", "conversations": [
        {"from": "User", "value": "Hi", "label": None},
        {"from": "Assistant", "value": "Hello!", "label": "quality:2"},
        {"from": "User", "value": "And now?"},
        {"from": "Assistant", "value": "dropped: the prompt ends at the last user turn",
         "label": "quality:4"}]}
    system, history, user = prompt_of(record, None)
    assert system == "Be brief." and user == "And now?" and len(history) == 2
    prompt = generation_prompt(system, history, user, label)
    expected = ("<extra_id_0>System\nBe brief.\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n"
                "<extra_id_2>quality:2\nHello!\n<extra_id_1>User\nAnd now?\n<extra_id_1>Assistant\n"
                f"<extra_id_2>{label}\n")
    assert prompt == expected
    out = sample_record(system, history, user, "Fine.", label)
    assert list(out) == ["conversations", "system", "mask", "type"]
    assert render_chat(parse_chat_record(out)).text == expected + "Fine.\n<extra_id_1>"
    # no system key: the SteerLM one; a record without type: history labels are not written
    plain = {"conversations": [{"from": "User", "value": "Q"},
                               {"from": "Assistant", "value": "A", "label": "quality:1"},
                               {"from": "User", "value": "R"}]}
    system, history, user = prompt_of(plain, None)
    assert system == SEED_SYSTEM and user == "R" and history[1].label is None
    assert prompt_of(plain, "override")[0] == "override"


def test_bootstrap_refuses_a_quality_other_than_4():
    from megatron_align.config import ConfigError

    with pytest.raises(ConfigError, match="maximum quality"):
        max_quality_label("quality:3")
    with pytest.raises(SteerError, match="unknown attribute"):
        max_quality_label("qualiti:4")


def test_finetune_overrides_are_split_and_paths_quoted():
    own, sft = split_overrides(["rounds=2", "finetune.trainer.sft.max_steps=3", "++finetune.model.x=1",
                                "~finetune.model.y", "sample.k=2"])
    assert own == ["rounds=2", "sample.k=2"]
    assert sft == ["trainer.sft.max_steps=3", "++model.x=1", "~model.y"]
    from megatron_align.config.overrides import parse_override

    for path in ["/tmp/a b/c:d [x]/it's", "/plain/path", "1234"]:
        assert parse_override(f"model.restore_from_path={yaml_quote(path)}").value == path
