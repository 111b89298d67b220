"""``examples/nlp/data/steerlm/attribute_annotate.py`` against the real reward server, the seed's "Generate
Annotations" step: ``serve_reward_model.py ... inference.port=P`` in the background, then
``attribute_annotate.py --input-file=... --output-file=... --port=P``.

The server runs once for the module as a subprocess on a free port over a tiny random 9-attribute reward
model (head bias 2 so predictions spread over 0..4). The input is tests/data/dummy-sft.jsonl (turns cut to 60
characters) plus hand-made SteerLM records (labels, unicode, an unlabelled answer, a record without answers,
one longer than the model's context) with a blank line. Checked: every Assistant label equals the label of an
in-process forward of the same model on the literal extra_id template text (rounded here with decimal's
ROUND_HALF_EVEN, clamped to 0..4), all else unchanged; SIGKILL mid-run + a torn last line, then a rerun,
give the uninterrupted run's bytes; a rerun of a finished file does nothing; server down, the server's 422,
an output of another input and a bad input line each exit 2 with one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import torch

from tests.helpers import ROOT, _clean_env, tiny_llama
from tests.servers_common import RM_SCRIPT, TEXTS, ServerProcess, free_port, python_cmd

SCRIPT = ROOT / "examples" / "nlp" / "data" / "steerlm" / "attribute_annotate.py"
CONTEXT = 512
ATTRS = ["quality", "toxicity", "humor", "creativity",
         "helpfulness", "correctness", "coherence", "complexity", "verbosity"]
SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
       "detailed, and polite answers to the user's questions.")
DELAY_ENV = "MEGATRON_ALIGN_ANNOTATE_BATCH_DELAY_S"


def _input_records() -> list:
    records = []
    for line in (ROOT / "tests" / "data" / "dummy-sft.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for turn in rec["conversations"]:
            turn["value"] = turn["value"][:60]
        records.append(rec)
    steer = [
        [("User", "Write a poem on NVIDIA ✨", None), ("Assistant", "In days of yore, in tech's great hall",
                                                     "quality:4,toxicity:0,humor:1")],
        [("User", "Q: How are you?", None), ("Assistant", "Fine, ünï", "helpfulness:3"),
         ("User", "Q: How big is the universe?", None), ("Assistant", "The answer is forty two.", None)],
        [("User", "A company arose, NVIDIA its call.", None)],
        [("User", "With graphics cards " * 60, None), ("Assistant", "it did astound " * 40, "quality:2")],
    ]
    for conv in steer:
        turns = [{"value": v, "from": f, "label": lab} for f, v, lab in conv]
        if turns[-1]["from"] == "Assistant" and turns[-1]["label"] is None:
            del turns[-1]["label"]  # an OASST answer without labels has no label key
        records.append({"conversations": turns, "system": SYS, "mask": "User", "type": "VALUE_TO_TEXT"})
    return records


@pytest.fixture(scope="module")
def env(tmp_path_factory, megatron_single):
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.reward import build_reward_model
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece

    root = tmp_path_factory.mktemp("annotate")
    records = _input_records()
    texts = TEXTS + [t["value"] for r in records for t in r["conversations"]]
    tok = load_tokenizer("sentencepiece", train_sentencepiece(texts, str(root / "tok"), vocab_size=512))
    cfg = tiny_llama(num_attributes=9, vocab_size=tok.vocab_size, make_vocab_size_divisible_by=64,
                     encoder_seq_length=CONTEXT, max_position_embeddings=CONTEXT, init_method_std=0.2)
    model = build_reward_model(cfg, vocab_size=tok.vocab_size).eval()
    with torch.no_grad():
        model.rm_head.bias.fill_(2.0)
    ckpt = save_checkpoint(root / "rm", model, cfg, tokenizer_dir=root / "tok")
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(31, "")  # a blank line: output line k is still input record k
    inp = root / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = free_port()
    server = ServerProcess(python_cmd(
        RM_SCRIPT, f"rm_model_file={ckpt}", "trainer.num_nodes=1", "trainer.devices=1",
        "++model.tensor_model_parallel_size=1", "++model.pipeline_model_parallel_size=1",
        "inference.micro_batch_size=2", f"inference.port={port}", "trainer.precision=32",
        "inference.max_sentences_per_request=8"))
    try:
        server.wait_ready()
        full = root / "full.jsonl"
        proc = _run(inp, full, port, "--batch-size=7")
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield {"root": root, "records": records, "input": inp, "port": port, "model": model, "tok": tok,
               "full": full.read_bytes(), "full_run": proc}
    finally:
        server.kill()


def _run(inp, out, port, *extra, env_extra=None, wait=True):
    env = _clean_env()
    env.update(env_extra or {})
    cmd = python_cmd(SCRIPT, f"--input-file={inp}", f"--output-file={out}", f"--port={port}", *extra)
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _template(conv, i):
    """The seed's extra_id template: system, turns 0..i without labels, the label marker."""
    text = f"<extra_id_0>System\n{SYS}\n"
    for turn in conv[:i + 1]:
        text += f"<extra_id_1>{turn['from']}\n{turn['value']}\n"
    return text + "<extra_id_2>"


def _labels_ok(label, values):
    """``label`` is ``values`` clamped and rounded half to even (either way within 1e-3 of a half)."""
    got = dict(item.split(":") for item in label.split(","))
    if list(got) != ATTRS:
        return False
    for name, v in zip(ATTRS, values):
        c = min(max(Decimal(repr(v)), Decimal(0)), Decimal(4))
        ok = {int(c.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))}
        if abs(c % 1 - Decimal("0.5")) < Decimal("0.001"):
            ok |= {int(c), int(c) + 1}
        if int(got[name]) not in ok:
            return False
    return True


def test_labels_equal_in_process_forward(env):
    out = [json.loads(x) for x in env["full"].decode("ascii").splitlines()]  # non-ASCII escaped, as NeMo
    records, model, tok = env["records"], env["model"], env["tok"]
    assert len(out) == len(records)
    rated = exceeded = 0
    seen = set()
    for src, got in zip(records, out):
        assert [k for k in got if k != "conversations"] == [k for k in src if k != "conversations"]
        assert {k: v for k, v in got.items() if k != "conversations"} == \
            {k: v for k, v in src.items() if k != "conversations"}
        assert len(got["conversations"]) == len(src["conversations"])
        for i, (s, g) in enumerate(zip(src["conversations"], got["conversations"])):
            if s["from"] != "Assistant":
                assert g == s
                continue
            same = {k: v for k, v in s.items() if k != "label"}
            assert {k: v for k, v in g.items() if k != "label"} == same
            ids = tok.text_to_ids(_template(src["conversations"], i))
            exceeded += len(ids) > CONTEXT
            ids = ids[:CONTEXT]
            with torch.no_grad():
                values = model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), None)[0].tolist()
            assert _labels_ok(g["label"], values), (i, g["label"], values)
            seen.add(g["label"])
            rated += 1
    assert rated == 91 and exceeded >= 1 and len(seen) > 20  # labels vary: the check can tell them apart
    assert f"{exceeded} texts were longer than the reward model's context" in env["full_run"].stderr


def _lines(path):
    data = path.read_bytes() if path.exists() else b""
    return data.count(b"\n")


def test_sigkill_and_torn_line_then_resume_equals_uninterrupted_run(env):
    out = env["root"] / "resumed.jsonl"
    proc = _run(env["input"], out, env["port"], "--batch-size=2", env_extra={DELAY_ENV: "0.4"}, wait=False)
    deadline = time.monotonic() + 120
    while _lines(out) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    k = _lines(out)
    total = len(env["records"])
    assert 3 <= k < total
    assert out.read_bytes() == b"".join(env["full"].splitlines(keepends=True)[:k])  # whole lines, fsynced
    with open(out, "ab") as f:
        f.write(b'{"conversations": [{"from": "Us')  # a crash in the middle of a write
    again = _run(env["input"], out, env["port"], "--batch-size=5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dropped a torn last line" in again.stderr
    assert f"annotated {total - k} records" in again.stdout and f"({k} already in" in again.stdout
    assert out.read_bytes() == env["full"]
    done = _run(env["input"], out, env["port"])
    assert done.returncode == 0 and "annotated 0 records" in done.stdout, done.stderr[-2000:]
    assert out.read_bytes() == env["full"]


def _main(argv):
    spec = importlib.util.spec_from_file_location("attribute_annotate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(a) for a in argv])


def _exit_2(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    lines = [x for x in capsys.readouterr().err.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1]


def test_server_down_exits_2_after_retries(env, capsys):
    port = free_port()
    out = env["root"] / "down.jsonl"
    t0 = time.monotonic()
    line = _exit_2(capsys, [f"--input-file={env['input']}", f"--output-file={out}", f"--port={port}",
                            "--retries=2", "--backoff=0.01"])
    assert line.startswith(f"reward server error: reward server unreachable at 127.0.0.1:{port} ("), line
    assert "refused" in line and line.endswith(
        f"is examples/nlp/gpt/serve_reward_model.py running with inference.port={port}? (gave up after 3 "
        "tries)")
    assert time.monotonic() - t0 < 30 and out.read_bytes() == b""


def test_server_refusal_is_not_retried(env, capsys):
    out = env["root"] / "refused.jsonl"
    line = _exit_2(capsys, [f"--input-file={env['input']}", f"--output-file={out}", f"--port={env['port']}",
                            "--batch-size=9", "--retries=3"])
    assert line.startswith(f"reward server error: 127.0.0.1:{env['port']} answered HTTP 422 to PUT /infer: "
                           "sentences: 9 sequences; at most 8 per request"), line


def test_output_of_another_input_exits_2_and_is_left_alone(env, capsys):
    out = env["root"] / "other.jsonl"
    lines = env["full"].splitlines(keepends=True)
    rec = json.loads(lines[2])
    rec["conversations"][0]["value"] += "!"
    bad = b"".join(lines[:2]) + json.dumps(rec).encode() + b"\n"
    out.write_bytes(bad)
    line = _exit_2(capsys, [f"--input-file={env['input']}", f"--output-file={out}", "--port=1"])
    assert line == (f"data error: {out}:3: conversations[0]: differs from the input record: it is not "
                    f"{env['input']}:3 annotated; this output was written for another input: pass a new "
                    "--output-file, or delete it to start over")
    assert out.read_bytes() == bad
    out.write_bytes(lines[1] + lines[0])  # two records in the wrong order
    assert f"{out}:1: conversations[" in _exit_2(
        capsys, [f"--input-file={env['input']}", f"--output-file={out}", "--port=1"])
    long = env["root"] / "long.jsonl"
    long.write_bytes(env["full"] + lines[0])
    assert f"{long}:{len(lines) + 1}: the output has more records than" in _exit_2(
        capsys, [f"--input-file={env['input']}", f"--output-file={long}", "--port=1"])


def test_bad_input_line_exits_2(env, capsys):
    inp = env["root"] / "bad.jsonl"
    text = env["input"].read_text(encoding="utf-8").splitlines()
    text[4] = text[4].replace('"from": "User"', '"from": "Bot"', 1)
    inp.write_text("\n".join(text) + "\n", encoding="utf-8")
    out = env["root"] / "bad_out.jsonl"
    line = _exit_2(capsys, [f"--input-file={inp}", f"--output-file={out}", "--port=1"])
    assert line == (f"data error: {inp}:5: conversations[0].from: unknown role 'Bot' (expected User or "
                    "Assistant)")
    assert not os.path.exists(out)  # the input is checked before anything is written
