"""SteerLM 2.0's dataset builder (``examples/nlp/gpt/build_steerlm2_dataset.py``; schema
``config/stages/steerlm2.BuildSteerLM2Config``): labelled chats in, seed 000's training records out.

For each input chat, x = the system and the turns before its last Assistant turn and a = that turn's label
(or ``label``); ``num_responses`` responses y_i ~ Q'(y|a,x) are sampled from ``policy_checkpoint``, and each
gets, for exactly the tokens the trainer scores (``data/steerlm2.py``: the response, its end of turn and the
next turn marker):

* log Q'(y|a,x): the policy's teacher-forced log-prob of softmax(logits / temperature), the distribution the
  response was drawn from (only temperature sampling is accepted; ``provenance.logq`` says ``temperature``, or
  ``raw`` at temperature 1);
* log P(y|x): the SFT model's teacher-forced log-prob after the prompt without the label line;
* log P(a|x,y): ``scoring/attribute_likelihood`` of a given the reward model's nine predictions for y
  (rated as the SteerLM annotation rates a response: ``data/steerlm/regression.regression_text``, SteerLM's
  system prompt).

Durable and resumable: prompts are cut into chunks of ``chunk_size`` in input order and chunk c is sampled
with seed ``sample.random_seed + c``; four phases (samples, log Q', log P(y|x), log P(a|x,y)), one model
loaded at a time, each append one JSON line per chunk to ``<output>.work/<phase>.jsonl`` and fsync it. A
killed run restarts at the first chunk a phase has not finished (a torn last line is dropped), so its output
equals an uninterrupted run's byte for byte; a manifest of the config and the input refuses to mix runs. The
output is written whole at the end (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
from pathlib import Path

from megatron_align.config.errors import ConfigError
from megatron_align.config.stages.steerlm2 import BuildSteerLM2Config

logger = logging.getLogger(__name__)

PHASES = ("samples", "logq", "logpy", "logpa")
ASSISTANT = "Assistant"


def read_prompts(cfg: BuildSteerLM2Config) -> tuple[list[dict], int]:
    """The input's prompts ``{system, turns [(role, value)], label, source}`` and the count of skipped
    records (``on_bad_record=skip``)."""
    from megatron_align.data.errors import DataError, RecordError
    from megatron_align.data.nemo_chat import parse_chat_record
    from megatron_align.data.steerlm.attributes import LabelError, decode_label
    from megatron_align.data.steerlm.io import read_rows

    out, skipped = [], 0
    for line, obj in read_rows(cfg.input):
        try:
            rec = parse_chat_record(obj, lenient=True)
            turns = list(rec.turns)
            last = max((i for i, t in enumerate(turns) if t.role == ASSISTANT), default=None)
            prompt = turns[:last] if last is not None else turns
            if not prompt or prompt[-1].role == ASSISTANT:
                raise RecordError("conversations", "no User turn to answer before the last Assistant turn")
            label = cfg.label if cfg.label is not None else (turns[last].label if last is not None else None)
            if label is None:
                raise RecordError("conversations", "the last Assistant turn has no label (or set label=...)")
            try:
                decode_label(label)
            except LabelError as e:
                raise RecordError("label", str(e)) from None
        except RecordError as e:
            err = DataError(cfg.input, line, e.field, e.problem)
            if cfg.on_bad_record == "error":
                raise err from None
            logger.warning("skipped: %s", err)
            skipped += 1
            continue
        out.append({"system": rec.system, "turns": [(t.role, t.value) for t in prompt], "label": label,
                    "source": f"{cfg.input}:{line}"})
    if not out:
        raise ConfigError(f"input={cfg.input}: no usable records", key="input")
    return out, skipped


def _manifest(cfg: BuildSteerLM2Config) -> dict:
    st = os.stat(cfg.input)
    return {"config": dataclasses.asdict(cfg),
            "input": [os.path.abspath(cfg.input), st.st_size, st.st_mtime_ns]}


class PhaseFile:
    """``<work>/<phase>.jsonl``: one JSON line per finished chunk, appended and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list = []
        if path.is_file():
            data = path.read_bytes()
            keep = data[:data.rfind(b"\n") + 1]  # a torn last line is dropped
            if len(keep) != len(data):
                path.write_bytes(keep)
            self.lines = [json.loads(x) for x in keep.decode().splitlines()]

    def append(self, value) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(value) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.lines.append(value)


def _kill_hook(phase: str, chunk: int) -> None:
    """Test hook: SIGKILL right after chunk ``MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK`` = ``phase:chunk``."""
    if os.environ.get("MEGATRON_ALIGN_TEST_KILL_AFTER_CHUNK") == f"{phase}:{chunk}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _score(model, tokenizer, vocab: int, texts: list[tuple[str, str]], mbs: int, temperature: float = 1.0):
    """sum over the response's tokens of log p (teacher-forced, ``prompt + response`` tokenized whole)."""
    from megatron_align.data.tokenize import Rendered, encode_rendered
    from megatron_align.scoring.forward import token_logprobs_of

    seqs, masks = [], []
    for prompt, response in texts:
        enc = encode_rendered(Rendered(prompt + response, ((len(prompt), len(prompt) + len(response)),)),
                              tokenizer)
        seqs.append(enc.ids.tolist())
        masks.append(enc.target_mask[1:])
    rows, _ = token_logprobs_of(model, seqs, tokenizer.pad_id, vocab, mbs, temperature=temperature)
    return [float(sum(lp for lp, m in zip(row, mask) if m)) for row, mask in zip(rows, masks)]


def build_steerlm2(cfg: BuildSteerLM2Config) -> dict:
    """Write ``cfg.output`` (module docstring); returns counts."""
    from megatron_align.config.data import ChatPromptTokens
    from megatron_align.data.nemo_chat import Turn
    from megatron_align.data.steerlm.attributes import decode_label
    from megatron_align.data.steerlm.records import SYSTEM_PROMPT
    from megatron_align.data.steerlm.regression import regression_text
    from megatron_align.data.steerlm2 import response_text, steerlm2_prompt
    from megatron_align.generation.build import load_backend, load_model
    from megatron_align.generation.text import clean_response, generate_local
    from megatron_align.scoring.attribute_likelihood import attribute_log_likelihood
    from megatron_align.scoring.reward_model import RewardScorer

    t = ChatPromptTokens()
    prompts, skipped = read_prompts(cfg)
    n, size = cfg.num_responses, cfg.chunk_size
    chunks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
    work = Path(str(cfg.output) + ".work")
    work.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(cfg)
    mpath = work / "manifest.json"
    if mpath.is_file() and json.loads(mpath.read_text()) != json.loads(json.dumps(manifest)):
        raise ConfigError(f"{work}: holds a build of another config or input; delete it to start over",
                          key="output")
    mpath.write_text(json.dumps(manifest, indent=1))
    files = {p: PhaseFile(work / f"{p}.jsonl") for p in PHASES}
    labelled = [[steerlm2_prompt(p["system"], p["turns"], ASSISTANT, p["label"], t) for p in c]
                for c in chunks]
    temperature = cfg.sample.temperature

    if len(files["samples"].lines) < len(chunks):
        backend = load_backend(cfg.policy_checkpoint, cfg.precision, cfg.max_batch_size)
        try:
            for c in range(len(files["samples"].lines), len(chunks)):
                params = dataclasses.replace(cfg.sample, random_seed=cfg.sample.random_seed + c)
                texts = generate_local(backend, [q for q in labelled[c] for _ in range(n)], params)
                files["samples"].append([clean_response(x, params.end_strings) for x in texts])
                logger.info("chunk %d/%d sampled", c + 1, len(chunks))
                _kill_hook("samples", c)
        finally:
            backend.close()
            gc.collect()
    samples = files["samples"].lines

    def pairs(c: int, prompt_texts: list) -> list:
        return [(prompt_texts[i // n], response_text(v, t)) for i, v in enumerate(samples[c])]

    for phase, ckpt in (("logq", cfg.policy_checkpoint), ("logpy", cfg.sft_checkpoint)):
        if len(files[phase].lines) < len(chunks):
            model, tok, mcfg = load_model(ckpt, "gpt", cfg.precision)
            vocab = mcfg.vocab_size or tok.vocab_size
            for c in range(len(files[phase].lines), len(chunks)):
                prompt_texts = labelled[c] if phase == "logq" else [
                    steerlm2_prompt(p["system"], p["turns"], ASSISTANT, None, t) for p in chunks[c]]
                files[phase].append(_score(model, tok, vocab, pairs(c, prompt_texts), cfg.micro_batch_size,
                                           temperature if phase == "logq" else 1.0))
                _kill_hook(phase, c)
            del model
            gc.collect()

    if len(files["logpa"].lines) < len(chunks):
        scorer = RewardScorer(cfg.rm_checkpoint, cfg.precision, cfg.micro_batch_size)
        for c in range(len(files["logpa"].lines), len(chunks)):
            texts, wanted = [], []
            for i, v in enumerate(samples[c]):
                p = chunks[c][i // n]
                turns = [Turn(r, x) for r, x in p["turns"]] + [Turn(ASSISTANT, v)]
                texts.append(regression_text(SYSTEM_PROMPT, turns, len(turns) - 1, t))
                wanted.append(decode_label(p["label"]))
            preds = scorer.score(texts)
            files["logpa"].append([attribute_log_likelihood(a, r, cfg.likelihood_sigma)
                                   for a, r in zip(wanted, preds)])
            _kill_hook("logpa", c)
        del scorer
        gc.collect()

    sampling = dataclasses.asdict(cfg.sample)
    provenance = {"policy": str(cfg.policy_checkpoint), "sft": str(cfg.sft_checkpoint),
                  "rm": str(cfg.rm_checkpoint), "logq": "raw" if temperature == 1.0 else "temperature",
                  "likelihood": {"kind": "discretized_gaussian", "sigma": cfg.likelihood_sigma}}
    tmp = Path(f"{cfg.output}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    with open(tmp, "w") as f:
        for c, chunk in enumerate(chunks):
            for j, p in enumerate(chunk):
                rows = range(j * n, (j + 1) * n)
                turns = [{"from": r, "value": v} for r, v in p["turns"]]
                rec = {"system": p["system"], "prompt_turns": turns, "label": p["label"],
                       "responses": [{"from": ASSISTANT, "value": samples[c][i],
                                      "log(P(a|x,y))": files["logpa"].lines[c][i],
                                      "log(P(y|x))": files["logpy"].lines[c][i],
                                      "log(Q(y|a,x))": files["logq"].lines[c][i]} for i in rows],
                       "provenance": {**provenance, "source": p["source"], "chunk": c,
                                      "sampling": {**sampling, "random_seed": cfg.sample.random_seed + c}}}
                line = json.dumps(rec) + "\n"
                digest.update(line.encode())
                f.write(line)
    os.replace(tmp, cfg.output)
    return {"prompts": len(prompts), "responses": len(prompts) * n, "skipped": skipped,
            "chunks": len(chunks), "sha256": digest.hexdigest()}
