"""SteerLM steering and bootstrapping end to end over tiny checkpoints (a policy and a 9-attribute regression
reward model sharing a sentencepiece tokenizer with the extra_id markers).

* ``megatron-align steer`` against a local checkpoint and against a running ``PUT /generate`` server
  (subprocess, free port) print the same greedy answer, which equals an independent full-recompute greedy
  loop (tests/naive_generation.py) on the seed's prompt written out by hand; the Python helper gives the same
  seeded samples through both routes.
* ``examples/nlp/gpt/steerlm/bootstrap.py`` runs one round (k=2 samples for 4 prompts, 3 SFT steps): the
  samples sit after the hand-written generation prompt, every label of the annotated file equals
  ``rewards_to_label`` of the reward model's own forward on the hand-written regression text, and a fine-tuned
  checkpoint is saved; a second run skips every step; annotation through the reward server gives the same
  file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from megatron_align.data.steerlm.annotate import rewards_to_label
from tests import naive_generation as ref
from tests.helpers import ROOT, _clean_env, tiny_llama
from tests.servers_common import GEN_SCRIPT, RM_SCRIPT, TEXTS, ServerProcess, free_port, python_cmd

BOOTSTRAP = ROOT / "examples" / "nlp" / "gpt" / "steerlm" / "bootstrap.py"
CONTEXT = 256
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
QUESTION = "Write a poem on NVIDIA in the style of Shakespeare"
VALUES = "humor:4,verbosity:1"
LABEL = ("quality:4,toxicity:0,humor:4,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,"
         "verbosity:1")
BOOT_LABEL = ("quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,"
              "complexity:4,verbosity:2")
PROMPTS = [
    {"system": SYSTEM, "mask": "User", "type": "VALUE_TO_TEXT",
     "conversations": [{"from": "User", "value": QUESTION}]},
    {"conversations": [{"from": "User", "value": "Q: How are you?"},
                       {"from": "Assistant", "value": "an old answer, not part of the prompt"}]},
    {"system": "Be brief.", "mask": "User", "type": "VALUE_TO_TEXT", "conversations": [
        {"from": "User", "value": "In days of yore"},
        {"from": "Assistant", "value": "A company arose, NVIDIA its call.", "label": "quality:3"},
        {"from": "User", "value": "With graphics cards, it did astound"}]},
    {"system": SYSTEM, "conversations": [{"from": "User", "value": "Q: How big is the universe?"}]},
]
# the generation prompt of each, written out (history label kept for the VALUE_TO_TEXT record)
PROMPT_TEXTS = [
    f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\n{QUESTION}\n<extra_id_1>Assistant\n<extra_id_2>{BOOT_LABEL}\n",
    f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\nQ: How are you?\n<extra_id_1>Assistant\n"
    f"<extra_id_2>{BOOT_LABEL}\n",
    "<extra_id_0>System\nBe brief.\n<extra_id_1>User\nIn days of yore\n<extra_id_1>Assistant\n"
    "<extra_id_2>quality:3\nA company arose, NVIDIA its call.\n<extra_id_1>User\n"
    f"With graphics cards, it did astound\n<extra_id_1>Assistant\n<extra_id_2>{BOOT_LABEL}\n",
    f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\nQ: How big is the universe?\n<extra_id_1>Assistant\n"
    f"<extra_id_2>{BOOT_LABEL}\n",
]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, megatron_single):
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reward import build_reward_model
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece

    root = tmp_path_factory.mktemp("steerlm_ckpts")
    tok = load_tokenizer("sentencepiece", train_sentencepiece(TEXTS, str(root / "tok"), vocab_size=512))
    common = dict(vocab_size=tok.vocab_size, make_vocab_size_divisible_by=64, encoder_seq_length=CONTEXT,
                  max_position_embeddings=CONTEXT, init_method_std=0.2)
    policy_cfg, rm_cfg = tiny_llama(**common), tiny_llama(num_attributes=9, **common)
    policy = build_gpt_model(policy_cfg, vocab_size=tok.vocab_size).eval()
    rm = build_reward_model(rm_cfg, vocab_size=tok.vocab_size).eval()
    with torch.no_grad():
        rm.rm_head.bias.fill_(2.0)  # predictions spread around the middle of 0..4: labels vary
    return {"policy": save_checkpoint(root / "policy", policy, policy_cfg, tokenizer_dir=root / "tok"),
            "rm": save_checkpoint(root / "rm", rm, rm_cfg, tokenizer_dir=root / "tok"),
            "policy_model": policy, "rm_model": rm, "tokenizer": tok}


@pytest.fixture(scope="module")
def servers(ckpts):
    """The generation server over the policy and the reward server over the RM (start-ups overlap)."""
    gen_port, rm_port = free_port(), free_port()
    gen = ServerProcess(python_cmd(GEN_SCRIPT, f"gpt_model_file={ckpts['policy']}", "server=True",
                                   "trainer.precision=32", f"port={gen_port}"))
    rm = ServerProcess(python_cmd(RM_SCRIPT, f"rm_model_file={ckpts['rm']}", "trainer.precision=32",
                                  f"inference.port={rm_port}"))
    try:
        yield {"gen": gen, "rm": rm, "gen_url": f"http://127.0.0.1:{gen_port}",
               "rm_url": f"http://127.0.0.1:{rm_port}"}
    finally:
        gen.kill()
        rm.kill()


def _steer_cmd(*args):
    return [sys.executable, "-m", "megatron_align.cli", "steer", "--prompt", QUESTION, "--values", VALUES,
            "--tokens-to-generate", "12", *args]


def _expected_greedy(ckpts, max_new=12) -> tuple[str, str]:
    """(answer as steer prints it, raw continuation) from the naive greedy loop on the seed's prompt."""
    tok, model = ckpts["tokenizer"], ckpts["policy_model"]
    prompt = (f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\n{QUESTION}\n<extra_id_1>Assistant\n"
              f"<extra_id_2>{LABEL}\n")
    prompt_ids = tok.text_to_ids(prompt)
    ids = ref.greedy(model, tok, prompt_ids, max_new, end_strings=["<extra_id_1>"])
    raw = tok.ids_to_text(ids)[len(tok.ids_to_text(prompt_ids)):]
    answer = raw[:-len("<extra_id_1>")] if raw.endswith("<extra_id_1>") else raw
    return (answer[:-1] if raw.endswith("<extra_id_1>") and answer.endswith("\n") else answer), raw


def test_steer_cli_local_checkpoint_and_server_give_the_same_greedy_answer(ckpts, servers):
    env = _clean_env()
    local = subprocess.Popen(_steer_cmd("--checkpoint", str(ckpts["policy"]), "--precision", "32"), cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        servers["gen"].wait_ready()
        remote = subprocess.run(_steer_cmd("--url", servers["gen_url"]), cwd=ROOT, env=env,
                                capture_output=True, timeout=300)
        local_out, local_err = local.communicate(timeout=300)
    finally:
        if local.poll() is None:
            local.kill()
    assert local.returncode == 0, local_err.decode()[-3000:]
    assert remote.returncode == 0, remote.stderr.decode()[-3000:]
    answer, raw = _expected_greedy(ckpts)
    assert raw.strip() and len(raw) > 5, "the tiny model answered nothing: the comparison would be vacuous"
    assert remote.stdout.decode("utf-8") == answer + "\n"
    assert local_out == remote.stdout


def test_steer_helper_same_seeded_samples_from_server_and_local(ckpts, servers):
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.steering import steer, steer_batch, steer_sampling

    servers["gen"].wait_ready()
    backend = load_backend(ckpts["policy"], precision="32")
    greedy = steer_sampling(12)
    answer, raw = _expected_greedy(ckpts)
    assert steer(QUESTION, VALUES, backend=backend, sampling=greedy) == answer
    assert steer(QUESTION, VALUES, url=servers["gen_url"], sampling=greedy, raw=True) == raw
    sampled = steer_sampling(10, greedy=False, temperature=1.0, random_seed=7)
    questions = [QUESTION, "Q: How are you?"]
    via_url = steer_batch(questions, "quality:2", url=servers["gen_url"], sampling=sampled)
    assert via_url == steer_batch(questions, "quality:2", backend=backend, sampling=sampled)
    other_seed = steer_sampling(10, greedy=False, temperature=1.0, random_seed=8)
    assert steer_batch(questions, "quality:2", backend=backend, sampling=other_seed) != via_url


# ----------------------------------------------------------------------------------------------------------
# bootstrapping
# ----------------------------------------------------------------------------------------------------------
def _regression_text(record, index):
    """What the reward model rates for turn ``index``, written out: NeMo-Aligner's system prompt, the turns up
    to ``index`` without labels, the label marker."""
    text = f"<extra_id_0>System\n{SYSTEM}\n"
    for t in record["conversations"][:index + 1]:
        text += f"<extra_id_1>{t['from']}\n{t['value']}\n"
    return text + "<extra_id_2>"


def _rm_forward(ckpts, text):
    ids = ckpts["tokenizer"].text_to_ids(text)
    with torch.no_grad():
        return ckpts["rm_model"](torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), None)[0].tolist()


@pytest.fixture(scope="module")
def boot(ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("boot")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    args = ["rounds=1", f"prompts={prompts}", f"sft_checkpoint={ckpts['policy']}", f"output_dir={d / 'out'}",
            f"annotate.rm_checkpoint={ckpts['rm']}", "annotate.batch_size=3", "annotate.precision=32",
            "sample.k=2",
            "sample.tokens_to_generate=8", "sample.values=verbosity:2", "sample.random_seed=3",
            "finetune.trainer.precision=32", "finetune.trainer.sft.max_steps=3",
            "finetune.trainer.sft.max_epochs=2", "finetune.model.data.train_ds.global_batch_size=4",
            "finetune.model.data.train_ds.micro_batch_size=2", "finetune.model.optim.lr=1e-3",
            "finetune.model.data.train_ds.max_seq_length=256",
            "finetune.exp_manager.create_tensorboard_logger=False"]
    res = subprocess.run([sys.executable, str(BOOTSTRAP), *args], cwd=ROOT, env=_clean_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-5000:]
    return {"dir": d, "out": d / "out" / "round_1", "args": args, "stdout": res.stdout, "prompts": prompts}


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bootstrap_samples_follow_the_max_quality_prompt(boot):
    from megatron_align.data.nemo_chat import parse_chat_record, render_chat

    samples = _read(boot["out"] / "samples.jsonl")
    assert len(samples) == 8, "k=2 responses for each of 4 prompts (none empty with this seed)"
    for i, rec in enumerate(samples):
        answer = rec["conversations"][-1]
        assert answer["from"] == "Assistant" and answer["label"] == BOOT_LABEL
        assert rec["type"] == "VALUE_TO_TEXT" and rec["mask"] == "User"
        text = render_chat(parse_chat_record(rec)).text  # what SFT trains on
        assert text == PROMPT_TEXTS[i // 2] + rec["conversations"][-1]["value"] + "\n<extra_id_1>"
    assert samples[3]["system"] == SYSTEM and len(samples[3]["conversations"]) == 2  # old answer dropped
    answers = [rec["conversations"][-1]["value"] for rec in samples]
    assert any(answers[2 * j] != answers[2 * j + 1] for j in range(4)), "the k samples are independent draws"


def test_bootstrap_labels_are_the_reward_models(boot, ckpts):
    samples = _read(boot["out"] / "samples.jsonl")
    annotated = _read(boot["out"] / "annotated.jsonl")
    assert len(annotated) == len(samples)
    labels = []
    for src, rec in zip(samples, annotated):
        for i, t in enumerate(rec["conversations"]):
            if t["from"] != "Assistant":
                assert t == src["conversations"][i]
                continue
            expected = rewards_to_label(_rm_forward(ckpts, _regression_text(rec, i)))
            assert t["label"] == expected and t["value"] == src["conversations"][i]["value"]
            labels.append(expected)
    # 8 sampled answers + the history answer of the multi-turn prompt's 2 records: all relabelled
    assert len(labels) == 10 and len(set(labels)) > 1 and BOOT_LABEL not in labels


def test_bootstrap_fine_tunes_a_checkpoint(boot, ckpts):
    from megatron_align.models.checkpoint import (
        checkpoint_kind,
        load_checkpoint,
        read_metadata,
        read_model_config,
    )
    from megatron_align.models.gpt import build_gpt_model

    done = json.loads((boot["out"] / "sft" / "bootstrap_done.json").read_text())
    final = done["checkpoint"]
    assert done["steps"] == 3 and read_metadata(final)["step"] == 3 and checkpoint_kind(final) == "gpt"
    assert f"checkpoint {final}" in boot["stdout"] and "round 1: 8 samples" in boot["stdout"]
    rows = [json.loads(line) for line in (boot["out"] / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    tuned = build_gpt_model(read_model_config(final), vocab_size=ckpts["tokenizer"].vocab_size)
    load_checkpoint(final, tuned)
    before = dict(ckpts["policy_model"].named_parameters())
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before), "every weight moved in 3 Adam steps"


def test_bootstrap_rerun_skips_finished_steps(boot):
    from megatron_align.algorithms.steerlm import run_bootstrap
    from megatron_align.config import load_config
    from megatron_align.config.stages.steerlm import BootstrapConfig, split_overrides

    out = boot["out"]
    files = [out / "samples.jsonl", out / "annotated.jsonl", out / "sft" / "bootstrap_done.json"]
    stamps = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    own, sft = split_overrides(boot["args"])
    cfg = load_config(BootstrapConfig, None, [*own, "annotate.rm_checkpoint=/not/loaded/when/done"])
    summary = run_bootstrap(cfg, sft)
    assert summary[0]["checkpoint"] == json.loads(files[2].read_text())["checkpoint"]
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == stamps


def test_annotate_through_the_reward_server_equals_in_process(boot, servers, tmp_path):
    from megatron_align.algorithms.steerlm import annotate_step
    from megatron_align.config.stages.steerlm import AnnotateSection

    servers["rm"].wait_ready()
    out = tmp_path / "annotated_http.jsonl"
    summary = annotate_step(boot["out"] / "samples.jsonl", out, AnnotateSection(url=servers["rm_url"],
                                                                                batch_size=5))
    assert summary == {"records": 8, "annotated_now": 8}
    assert _read(out) == _read(boot["out"] / "annotated.jsonl")
