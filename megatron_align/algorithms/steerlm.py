"""SteerLM bootstrapping (the SteerLM paper's step 4, figure 4 of seed 001): sample responses conditioned on
maximum quality, label them with the attribute prediction model, fine-tune on them.

Steps (each a function here and a command in ``examples/nlp/gpt/steerlm/``):

a. ``sample_step``: every prompt of a JSONL of NeMo chat records (the conversation up to its last ``User``
   turn) is answered ``k`` times by the attribute-conditioned SFT model, conditioned on ``quality:4`` and the
   other attributes as given (``sample.values``, else the seed's values). The generation prompt is
   ``nemo_chat.chat_prompt`` with the label line: byte for byte what SFT trained the answer after. Output:
   one ``VALUE_TO_TEXT`` record per response (history, user turn, the response labelled with the
   conditioning label), ``k`` consecutive records per prompt; responses empty after removing the stop string
   are dropped (an empty turn is not a valid record) and counted. Written atomically.
b. ``annotate_step``: each Assistant turn's label is replaced by the reward model's (``annotate_batches``:
   nine predictions clamped to 0..4 and rounded), through the reward server (``RewardClient``, what
   ``examples/nlp/data/steerlm/attribute_annotate.py`` uses) or in process (``scoring.RewardScorer``). The
   output is ``AnnotatedFile``'s: appended batch by batch and resumed after a crash.
c. ``finetune_step``: ``run_sft`` on the annotated file from the policy checkpoint, config from
   ``conf/gpt_sft.yaml`` + ``finetune.*`` overrides (``bootstrap_config.sft_config``); the run resumes its own
   newest checkpoint. ``<run_dir>/bootstrap_done.json`` names the final checkpoint once it returns.

``run_bootstrap`` loops the steps over ``rounds`` (round r samples from round r-1's checkpoint) under
``output_dir/round_<r>/`` and skips every step whose output is complete, so a stopped loop is started again
with the same command. In-process models need a single process (sampling through ``sample.url`` serves one
policy, so it is for one round).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
from pathlib import Path
from typing import Optional

from megatron_align.config.errors import ConfigError
from megatron_align.config.stages.steerlm import (
    END_STRING,
    AnnotateSection,
    BootstrapConfig,
    SampleSection,
    sft_config,
)
from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import Turn, chat_prompt, parse_chat_record
from megatron_align.data.steerlm.io import read_rows, record_error, write_jsonl
from megatron_align.data.steerlm.records import CHAT_TYPE, SYSTEM_PROMPT, USER, turn
from megatron_align.generation.steering import SteerError, encode_labels, parse_values

logger = logging.getLogger(__name__)

DONE_MARKER = "bootstrap_done.json"
"""Written in a fine-tuning run directory when the run finished: ``{"checkpoint": ..., "steps": ...}``."""


# ----------------------------------------------------------------------------------------------------------
# a. sample
# ----------------------------------------------------------------------------------------------------------
def max_quality_label(values: str) -> str:
    """The conditioning label: ``values`` completed with the seed's defaults, quality 4."""
    parsed = parse_values(values)
    if parsed["quality"] != 4:
        raise ConfigError(f"sample.values: quality:{parsed['quality']}: bootstrapping samples at maximum "
                          "quality (leave quality out or write quality:4)", key="sample.values")
    return encode_labels(parsed)


def prompt_of(record: object, system: Optional[str]) -> tuple[str, list[Turn], str]:
    """``(system, history, user text)`` of a chat record: the conversation up to its last User turn (history
    labels kept only for ``VALUE_TO_TEXT`` records, as SFT renders them)."""
    rec = parse_chat_record(record)
    users = [i for i, t in enumerate(rec.turns) if t.role == USER]
    if not users:
        raise RecordError("conversations", "no User turn to answer")
    last = users[-1]
    keep = rec.type == CHAT_TYPE
    history = [Turn(t.role, t.value, t.label if keep else None) for t in rec.turns[:last]]
    if system is None:
        system = rec.system if isinstance(record, dict) and "system" in record else SYSTEM_PROMPT
    return system, history, rec.turns[last].value


def generation_prompt(system: str, history: list[Turn], user: str, label: str) -> str:
    """What the policy continues: the chat up to the user turn, the Assistant header and the label line."""
    return chat_prompt(system, [*history, Turn(USER, user)], label=label)


def sample_record(system: str, history: list[Turn], user: str, response: str, label: str) -> dict:
    """One sampled chat in the SteerLM record layout (``records.sft_record``'s key order)."""
    convs = [turn(t.role, t.value, t.label) for t in history]
    convs += [turn(USER, user), turn("Assistant", response, label)]
    return {"conversations": convs, "system": system, "mask": USER, "type": CHAT_TYPE}


def sampling_params(s: SampleSection, seed: Optional[int]):
    """The sampling settings of ``sample.*`` with ``random_seed`` ``seed`` and the chat template's next-turn
    marker among the end strings (an answer ends where the model starts the next turn); ``ConfigError``
    naming the key."""
    params = s.sampling()
    params = dataclasses.replace(params, random_seed=seed,
                                 end_strings=list(dict.fromkeys([*params.end_strings, END_STRING])))
    try:
        params.validate()
    except ValueError as e:
        raise ConfigError(f"sample.{e}", key="sample") from None
    if s.k < 1:
        raise ConfigError("sample.k: must be >= 1", key="sample.k")
    return params


def _generate(prompts: list[str], s: SampleSection, params, checkpoint, backend) -> list[str]:
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.remote import generate_http
    from megatron_align.generation.text import generate_local

    if s.url is not None:
        per_request = max(1, 64 // s.k) * s.k  # a prompt's k copies share a request (distinct draws)
        return generate_http(s.url, prompts, params, request_size=per_request)
    own = backend is None
    if own:
        if not checkpoint:
            raise ConfigError("checkpoint is not set (the policy to sample from), nor sample.url",
                              key="checkpoint")
        backend = load_backend(checkpoint, s.precision, s.max_batch_size)
    try:
        return generate_local(backend, prompts, params)
    finally:
        if own:
            backend.close()
            del backend
            gc.collect()


def sample_step(prompts_file, output, s: SampleSection, checkpoint=None, seed: Optional[int] = None,
                backend=None) -> dict:
    """Step a (module docstring): writes ``output``; returns counts."""
    from megatron_align.generation.text import clean_response

    label = max_quality_label(s.values)
    params = sampling_params(s, s.random_seed if seed is None else seed)
    items = []
    for number, record in read_rows(prompts_file):
        try:
            items.append(prompt_of(record, s.system))
        except RecordError as e:
            raise record_error(prompts_file, number, e) from None
    if not items:
        raise ConfigError(f"prompts={prompts_file}: no records", key="prompts")
    texts = [generation_prompt(*item, label) for item in items for _ in range(s.k)]
    logger.info("sampling %d x %d responses at %s", len(items), s.k, label)
    answers = _generate(texts, s, params, checkpoint, backend)
    records, empty = [], 0
    for i, answer in enumerate(answers):
        system, history, user = items[i // s.k]
        response = clean_response(answer, params.end_strings)
        if not response.strip():
            empty += 1
            continue
        records.append(sample_record(system, history, user, response, label))
    if not records:
        raise SteerError(f"every sampled response was empty ({len(answers)}); nothing to annotate")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, records)
    if empty:
        logger.warning("%d of %d sampled responses were empty and were dropped", empty, len(answers))
    return {"prompts": len(items), "samples": len(records), "dropped_empty": empty, "label": label}


# ----------------------------------------------------------------------------------------------------------
# b. annotate
# ----------------------------------------------------------------------------------------------------------
def count_records(path) -> int:
    return sum(1 for _ in read_rows(path))


def annotation_complete(input_file, output) -> bool:
    """``output`` holds one complete line per record of ``input_file`` (nothing left to annotate)."""
    if not os.path.isfile(output):
        return False
    data = Path(output).read_bytes()
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    return data.endswith(b"\n") and lines == count_records(input_file)


def check_scorer_source(a: AnnotateSection) -> None:
    """``ConfigError`` unless exactly one of ``annotate.url`` / ``annotate.rm_checkpoint`` is set."""
    if (a.url is None) == (a.rm_checkpoint is None):
        raise ConfigError("give exactly one of annotate.url (a running reward server) or "
                          "annotate.rm_checkpoint", key="annotate.url")


def make_scorer(a: AnnotateSection):
    """A ``Scorer``: the reward server's client, or the reward model in this process."""
    check_scorer_source(a)
    if a.url is not None:
        from urllib.parse import urlsplit

        from megatron_align.scoring.remote import RewardClient

        parts = urlsplit(a.url if "://" in a.url else "http://" + a.url)
        if parts.port is None:
            raise ConfigError(f"annotate.url={a.url}: give host and port, e.g. http://127.0.0.1:1424",
                              key="annotate.url")
        return RewardClient(parts.hostname, parts.port, a.timeout, a.retries, add_eos=a.add_eos)
    from megatron_align.scoring.reward_model import RewardScorer

    scorer = RewardScorer(a.rm_checkpoint, a.precision, a.micro_batch_size, add_eos=a.add_eos)
    if scorer.num_attributes != 9:
        raise ConfigError(f"annotate.rm_checkpoint={a.rm_checkpoint} has {scorer.num_attributes} outputs; "
                          "SteerLM labels need the 9-attribute regression reward model",
                          key="annotate.rm_checkpoint")
    return scorer


def annotate_step(input_file, output, a: AnnotateSection, score=None) -> dict:
    """Step b (module docstring); resumes a partial ``output``. ``score``: a scorer to use instead of
    ``make_scorer(a)``."""
    from megatron_align.data.steerlm.annotate import annotate_batches
    from megatron_align.data.steerlm.annotated_file import AnnotatedFile

    if a.batch_size < 1:
        raise ConfigError("annotate.batch_size: must be >= 1", key="annotate.batch_size")
    total = count_records(input_file)
    if annotation_complete(input_file, output):
        return {"records": total, "annotated_now": 0}
    score = score or make_scorer(a).score
    system = None if a.use_record_system else SYSTEM_PROMPT
    rows = read_rows(input_file)
    with AnnotatedFile(output, input_file) as out:
        done = out.resume(rows, "assistant")
        for batch in annotate_batches((r for _, r in rows), score, a.batch_size, "assistant", system):
            out.append(batch)
    return {"records": total, "annotated_now": total - done}


def mean_labels(path) -> dict[str, float]:
    """Mean of each attribute over the last Assistant turn's label of every record of ``path``."""
    from megatron_align.data.steerlm.attributes import decode_label

    sums: dict[str, float] = {}
    n = 0
    for _, rec in read_rows(path):
        values = decode_label(rec["conversations"][-1]["label"])
        n += 1
        for name, v in values.items():
            sums[name] = sums.get(name, 0.0) + v
    return {name: total / max(n, 1) for name, total in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# c. fine-tune
# ----------------------------------------------------------------------------------------------------------
def finished_checkpoint(run_dir) -> Optional[Path]:
    """The final checkpoint of a finished fine-tuning run (its done marker), else None."""
    from megatron_align.models.checkpoint import is_complete_checkpoint

    marker = Path(run_dir) / DONE_MARKER
    if not marker.is_file():
        return None
    path = Path(json.loads(marker.read_text())["checkpoint"])
    return path if is_complete_checkpoint(path) else None


def finetune_step(train_file, checkpoint, run_dir, overrides: list[str]) -> Path:
    """Step c (module docstring): the final checkpoint of the SFT run."""
    from megatron_align.algorithms.sft import run_sft
    from megatron_align.models.checkpoint import latest_checkpoint

    done = finished_checkpoint(run_dir)
    if done is not None:
        return done
    cfg = sft_config(train_file, checkpoint, run_dir, overrides)
    summary = run_sft(cfg)
    final = summary.get("last_checkpoint") or latest_checkpoint(Path(run_dir) / "checkpoints")
    if final is None:
        raise SteerError(f"fine-tuning in {run_dir} saved no checkpoint")
    tmp = Path(run_dir) / (DONE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"checkpoint": str(final), "steps": summary["steps"]}))
    os.replace(tmp, Path(run_dir) / DONE_MARKER)
    return Path(final)


# ----------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------
def round_paths(output_dir, r: int) -> dict[str, Path]:
    d = Path(output_dir) / f"round_{r}"
    return {"dir": d, "samples": d / "samples.jsonl", "annotated": d / "annotated.jsonl", "sft": d / "sft"}


def run_bootstrap(cfg: BootstrapConfig, finetune_overrides: list[str]) -> list[dict]:
    """``cfg.rounds`` rounds of sample -> annotate -> fine-tune (module docstring); one summary per round."""
    from megatron_align.config.stages.steerlm import require

    require(cfg, "prompts", "sft_checkpoint", "output_dir")
    if cfg.rounds < 1:
        raise ConfigError("rounds: must be >= 1", key="rounds")
    if cfg.sample.url is not None and cfg.rounds > 1:
        raise ConfigError("sample.url serves one fixed policy: with rounds > 1 each round samples from the "
                          "previous round's checkpoint, in process (leave sample.url out)", key="sample.url")
    max_quality_label(cfg.sample.values)
    sampling_params(cfg.sample, cfg.sample.random_seed)
    check_scorer_source(cfg.annotate)
    sft_config(cfg.prompts, cfg.sft_checkpoint, round_paths(cfg.output_dir, 1)["sft"], finetune_overrides)
    policy, summaries = Path(cfg.sft_checkpoint), []
    for r in range(1, cfg.rounds + 1):
        p = round_paths(cfg.output_dir, r)
        summary: dict = {"round": r, "policy": str(policy)}
        if finished_checkpoint(p["sft"]) is None:
            if not p["samples"].is_file():
                seed = None if cfg.sample.random_seed is None else cfg.sample.random_seed + r - 1
                summary |= sample_step(cfg.prompts, p["samples"], cfg.sample, policy, seed)
            if not annotation_complete(p["samples"], p["annotated"]):
                scorer = make_scorer(cfg.annotate)
                annotate_step(p["samples"], p["annotated"], cfg.annotate, scorer.score)
                del scorer  # an in-process reward model leaves memory to the fine-tuning
                gc.collect()
        summary["mean_labels"] = mean_labels(p["annotated"])
        policy = finetune_step(p["annotated"], policy, p["sft"], finetune_overrides)
        summary["checkpoint"] = str(policy)
        logger.info("bootstrap round %d: %s", r, summary)
        summaries.append(summary)
    return summaries
