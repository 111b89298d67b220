"""SteerLM 2.0's dataset builder (``examples/nlp/gpt/build_steerlm2_dataset.py``; schema
``config/stages/steerlm2.BuildSteerLM2Config``): labelled chats in, seed 000's training records out.

For each input chat, x = the system and the turns before its last Assistant turn and a = that turn's label
(or ``label``); ``num_responses`` responses y_i ~ Q'(y|a,x) are sampled from ``policy_checkpoint``, and each
gets, for exactly the tokens the trainer scores (``data/steerlm2.py``: the response, its end of turn and the
next turn marker):

* log Q'(y|a,x): the policy's teacher-forced log-prob under the distribution the response was drawn from,
  every processor of ``sample.*`` applied (padded vocabulary cut, repetition penalty, min length,
  temperature, top-k, top-p: ``logprobs/sampling.sampling_token_logprobs``; ``provenance.logq`` =
  ``sampling``, ``provenance.logq_processors`` names the processors in effect: none at the defaults, where it
  is the model's own log-prob). A response with a token outside that support (its re-tokenized text is not
  what was drawn, or the length limit cut it before its end-of-turn tail) has log Q' = -inf: it is dropped
  and counted;
* log P(y|x): the SFT model's teacher-forced log-prob after the prompt without the label line;
* log P(a|x,y): ``scoring/attribute_likelihood`` of a given the reward model's nine predictions for y
  (rated as the SteerLM annotation rates a response: ``data/steerlm/regression.regression_text``, SteerLM's
  system prompt).

Durable and resumable: prompts are cut into chunks of ``chunk_size`` in input order and chunk c is sampled
with seed ``sample.random_seed + c``; four phases (samples, log Q', log P(y|x), log P(a|x,y)), one model
loaded at a time, each write one file per chunk, ``<output>.work/<phase>/<c>.json`` (temporary file, fsync,
rename). A killed run redoes only the chunks a phase has not written, so its output equals an uninterrupted
run's byte for byte; a manifest of the config (without the parallel layout) and the input refuses to mix
runs. The output is written whole at the end (temporary file, then rename).

Parallel (torchrun / srun): ``tensor_model_parallel_size`` x ``pipeline_model_parallel_size`` ranks hold one
replica of each model, and the ``world / (TP x PP)`` replicas share the chunks (chunk c goes to replica
c mod DP). A chunk's seed does not depend on the layout, so data parallelism gives the single-process bytes;
TP and PP change the float sums (log-probs move by ~1e-6). Every phase ends at a barrier; the first rank of
each replica writes its chunks and global rank 0 the output.
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
from megatron_align.training.chunks import ChunkDir, ReplicaLayout, open_work_dir

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


LAYOUT_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size")


def _manifest(cfg: BuildSteerLM2Config) -> dict:
    """The config (without the parallel layout: a build may resume on another one) and the input's
    identity."""
    st = os.stat(cfg.input)
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LAYOUT_KEYS}
    return {"config": config,
            "input": [os.path.abspath(cfg.input), st.st_size, st.st_mtime_ns]}


def _score(model, tokenizer, vocab: int, texts: list[tuple[str, str]], mbs: int, sampling=None) -> list:
    """sum over the response's tokens of log p (teacher-forced, ``prompt + response`` tokenized whole); with
    ``sampling`` (``ChoiceRules``), of the sampling distribution (the response's first token is the first
    one sampled)."""
    from megatron_align.data.tokenize import Rendered, encode_rendered
    from megatron_align.scoring.forward import token_logprobs_of

    seqs, masks, starts = [], [], []
    for prompt, response in texts:
        enc = encode_rendered(Rendered(prompt + response, ((len(prompt), len(prompt) + len(response)),)),
                              tokenizer)
        seqs.append(enc.ids.tolist())
        masks.append(enc.target_mask[1:])
        starts.append(next(i for i, m in enumerate(enc.target_mask) if m))
    rows, _ = token_logprobs_of(model, seqs, tokenizer.pad_id, vocab, mbs, sampling=sampling,
                                starts=starts if sampling is not None else None)
    return [float(sum(lp for lp, m in zip(row, mask) if m)) for row, mask in zip(rows, masks)]


def _open_work(cfg: BuildSteerLM2Config, layout: ReplicaLayout) -> Path:
    """``<output>.work/`` with its manifest checked on every rank."""
    return open_work_dir(Path(str(cfg.output) + ".work"), _manifest(cfg), layout, "output")


class _Build:
    """One build's inputs and phase files, shared by the phase functions below."""

    def __init__(self, cfg: BuildSteerLM2Config):
        from megatron_align.config.data import ChatPromptTokens
        from megatron_align.data.steerlm2 import steerlm2_prompt

        self.layout = ReplicaLayout(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size,
                                    cfg.sample.random_seed)
        self.cfg, self.t = cfg, ChatPromptTokens()
        self.prompts, self.skipped = read_prompts(cfg)
        size = cfg.chunk_size
        self.chunks = [self.prompts[i:i + size] for i in range(0, len(self.prompts), size)]
        work = _open_work(cfg, self.layout)
        self.files = {p: ChunkDir(work / p) for p in PHASES}
        self.labelled = [[steerlm2_prompt(p["system"], p["turns"], ASSISTANT, p["label"], self.t) for p in c]
                         for c in self.chunks]

    def todo(self, phase: str) -> list[int]:
        return self.layout.todo(self.files[phase], len(self.chunks))

    def write(self, phase: str, c: int, value) -> None:
        self.layout.save(self.files[phase], phase, c, value)

    def pairs(self, c: int, prompt_texts: list) -> list:
        """``(prompt, response text)`` of chunk c's samples; sample i answers prompt_texts[i // n]."""
        from megatron_align.data.steerlm2 import response_text

        n = self.cfg.num_responses
        return [(prompt_texts[i // n], response_text(v, self.t))
                for i, v in enumerate(self.files["samples"].read(c))]


def _sample_and_score_policy(b: _Build) -> None:
    """Phases ``samples`` and ``logq`` on one load of the policy."""
    from megatron_align.generation.build import load_model, make_backend
    from megatron_align.generation.text import clean_response, generate_local
    from megatron_align.logprobs.sampling import ChoiceRules

    cfg, n = b.cfg, b.cfg.num_responses
    todo = {p: b.todo(p) for p in ("samples", "logq")}
    if not b.layout.any_rank(bool(todo["samples"] or todo["logq"])):
        return
    model, tok, mcfg = load_model(cfg.policy_checkpoint, "gpt", cfg.precision)
    backend = make_backend(model, tok, mcfg, cfg.max_batch_size)
    try:
        for c in todo["samples"]:
            params = dataclasses.replace(cfg.sample, random_seed=cfg.sample.random_seed + c)
            texts = generate_local(backend, [q for q in b.labelled[c] for _ in range(n)], params)
            b.write("samples", c, [clean_response(x, params.end_strings) for x in texts])
            logger.info("chunk %d/%d sampled", c + 1, len(b.chunks))
    finally:
        backend.close()
    b.layout.barrier()
    rules = ChoiceRules(cfg.sample, tok.eos_id, tok.vocab_size)  # the backend's own eos and vocabulary
    for c in todo["logq"]:
        b.write("logq", c, _score(model, tok, mcfg.vocab_size or tok.vocab_size, b.pairs(c, b.labelled[c]),
                                  cfg.micro_batch_size, rules))


def _score_sft(b: _Build) -> None:
    """Phase ``logpy``: log P(y|x) of the SFT model after the prompt without the label line."""
    from megatron_align.data.steerlm2 import steerlm2_prompt
    from megatron_align.generation.build import load_model

    todo = b.todo("logpy")
    if not b.layout.any_rank(bool(todo)):
        return
    model, tok, mcfg = load_model(b.cfg.sft_checkpoint, "gpt", b.cfg.precision)
    for c in todo:
        plain = [steerlm2_prompt(p["system"], p["turns"], ASSISTANT, None, b.t) for p in b.chunks[c]]
        b.write("logpy", c, _score(model, tok, mcfg.vocab_size or tok.vocab_size, b.pairs(c, plain),
                                   b.cfg.micro_batch_size))


def _score_attributes(b: _Build) -> None:
    """Phase ``logpa``: log P(a|x,y) from the reward model's predictions (as SteerLM's annotation rates)."""
    from megatron_align.data.nemo_chat import Turn
    from megatron_align.data.steerlm.attributes import decode_label
    from megatron_align.data.steerlm.records import SYSTEM_PROMPT
    from megatron_align.data.steerlm.regression import regression_text
    from megatron_align.scoring.attribute_likelihood import attribute_log_likelihood
    from megatron_align.scoring.reward_model import RewardScorer

    todo, n = b.todo("logpa"), b.cfg.num_responses
    if not b.layout.any_rank(bool(todo)):
        return
    scorer = RewardScorer(b.cfg.rm_checkpoint, b.cfg.precision, b.cfg.micro_batch_size)
    for c in todo:
        texts, wanted = [], []
        for i, v in enumerate(b.files["samples"].read(c)):
            p = b.chunks[c][i // n]
            turns = [Turn(r, x) for r, x in p["turns"]] + [Turn(ASSISTANT, v)]
            texts.append(regression_text(SYSTEM_PROMPT, turns, len(turns) - 1, b.t))
            wanted.append(decode_label(p["label"]))
        preds = scorer.score(texts)
        b.write("logpa", c, [attribute_log_likelihood(a, r, b.cfg.likelihood_sigma)
                             for a, r in zip(wanted, preds)])


def build_steerlm2(cfg: BuildSteerLM2Config) -> dict:
    """Write ``cfg.output`` (module docstring); returns counts."""
    b = _Build(cfg)
    for phase in (_sample_and_score_policy, _score_sft, _score_attributes):
        phase(b)  # one model at a time: each phase's model is freed before the next loads
        gc.collect()
        b.layout.barrier()
    counts = {"prompts": len(b.prompts), "responses": 0, "skipped": b.skipped, "chunks": len(b.chunks),
              "outside_support": 0, "sha256": None}
    if b.layout.rank0:
        counts.update(_write_output(cfg, b.chunks, b.files))
    b.layout.barrier()
    return counts


def _processors(s) -> list[str]:
    """The processors that shape log Q' beyond the model's own log-softmax over its real vocabulary (none at
    the defaults: then log Q' is the model's own log-prob)."""
    active = {"temperature": s.temperature != 1.0, "top_k": s.top_k > 0, "top_p": 0.0 < s.top_p < 1.0,
              "repetition_penalty": s.repetition_penalty != 1.0,
              "min_tokens_to_generate": s.min_tokens_to_generate > 0}
    return [name for name, on in active.items() if on]


def _write_output(cfg: BuildSteerLM2Config, chunks: list, files: dict) -> dict:
    """The records, in input order, written whole; a response whose log Q' is -inf (outside the sampling
    distribution's support) is dropped and counted, a prompt left without responses too."""
    import math

    n = cfg.num_responses
    sampling = dataclasses.asdict(cfg.sample)
    provenance = {"policy": str(cfg.policy_checkpoint), "sft": str(cfg.sft_checkpoint),
                  "rm": str(cfg.rm_checkpoint), "logq": "sampling",
                  "logq_processors": _processors(cfg.sample),
                  "likelihood": {"kind": "discretized_gaussian", "sigma": cfg.likelihood_sigma}}
    tmp = Path(f"{cfg.output}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    kept = dropped = 0
    with open(tmp, "w") as f:
        for c, chunk in enumerate(chunks):
            got = {p: files[p].read(c) for p in PHASES}
            for j, p in enumerate(chunk):
                rows = [i for i in range(j * n, (j + 1) * n) if math.isfinite(got["logq"][i])]
                dropped += n - len(rows)
                if not rows:
                    continue
                kept += len(rows)
                turns = [{"from": r, "value": v} for r, v in p["turns"]]
                rec = {"system": p["system"], "prompt_turns": turns, "label": p["label"],
                       "responses": [{"from": ASSISTANT, "value": got["samples"][i],
                                      "log(P(a|x,y))": got["logpa"][i],
                                      "log(P(y|x))": got["logpy"][i],
                                      "log(Q(y|a,x))": got["logq"][i]} for i in rows],
                       "provenance": {**provenance, "source": p["source"], "chunk": c,
                                      "sampling": {**sampling, "random_seed": cfg.sample.random_seed + c}}}
                line = json.dumps(rec) + "\n"
                digest.update(line.encode())
                f.write(line)
    os.replace(tmp, cfg.output)
    if dropped:
        logger.warning("%d responses dropped: log Q'(y|a,x) = -inf, a token the sampling distribution "
                       "excludes (re-tokenized text differs from the drawn ids, or cut by the length limit)",
                       dropped)
    return {"responses": kept, "outside_support": dropped, "sha256": digest.hexdigest()}
