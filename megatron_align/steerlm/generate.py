"""The two generation routes of SteerLM inference and bootstrapping, which give the same text for the same
prompt and settings:

* ``generate_http(url, prompts, params)``: NeMo's ``PUT /generate`` (``examples/megatron_gpt_eval.py
  server=True``) with the seed's request fields (``sentences``, ``tokens_to_generate``, ``temperature``,
  ``add_BOS``, ``top_k``, ``top_p``, ``greedy``, ``all_probs``, ``repetition_penalty``,
  ``min_tokens_to_generate``, ``end_strings``; ``random_seed`` when set), in requests of at most
  ``request_size`` sentences. Standard library only (``urllib``).
* ``load_backend(checkpoint)`` + ``generate_local(backend, prompts, params)``: the megatron KV-cache engine
  over a ``gpt`` checkpoint in this process, built as the generation server builds it
  (``generation_server.make_backend``: same context length and engine) and decoded as the server decodes
  (``generate_api.sentence_of``).

Both return the continuation: the prompt + response text after ``len(prompt)`` characters. ``clean_response``
then removes the stop string (``<extra_id_1>``) and the end-of-turn newline the model writes before it.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from megatron_align.servers.reward_client import http_error_detail
from megatron_align.steerlm.steer import SteerError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# the text of an answer
# ----------------------------------------------------------------------------------------------------------
def clean_response(text: str, end_strings: Sequence[str], end_of_turn: str = "\n") -> str:
    """``text`` without a trailing end string and the one ``end_of_turn`` before it (a response cut by the
    length limit keeps its text)."""
    for end in sorted(end_strings, key=len, reverse=True):
        if end and text.endswith(end):
            text = text[:-len(end)]
            if end_of_turn and text.endswith(end_of_turn):
                text = text[:-len(end_of_turn)]
            break
    return text


def request_body(prompts: Sequence[str], params) -> dict:
    """The ``PUT /generate`` body for ``prompts`` under ``SamplingParams`` ``params`` (the seed's fields)."""
    body = {"sentences": list(prompts), "tokens_to_generate": params.tokens_to_generate,
            "temperature": params.temperature, "add_BOS": params.add_BOS, "top_k": params.top_k,
            "top_p": params.top_p, "greedy": params.greedy, "all_probs": False,
            "repetition_penalty": params.repetition_penalty,
            "min_tokens_to_generate": params.min_tokens_to_generate, "end_strings": list(params.end_strings)}
    if params.random_seed is not None:
        body["random_seed"] = params.random_seed
    return body


# ----------------------------------------------------------------------------------------------------------
# HTTP: a running generation server
# ----------------------------------------------------------------------------------------------------------
def endpoint(url: str, path: str) -> str:
    """``http://host:port`` (or ``host:port``) -> ``http://host:port/<path>``; a URL already ending in
    ``/<path>`` is kept."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/" + path) else f"{url}/{path}"


def put_json(url: str, body: dict, timeout: float, what: str) -> dict:
    """``PUT`` ``body`` as JSON, the decoded JSON answer; ``SteerError`` naming ``what`` (the server) for a
    refused request or an unreachable server."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        text = http_error_detail(e)
        raise SteerError(f"{what} at {url} refused the request (HTTP {e.code}): {text}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SteerError(f"cannot reach the {what} at {url} ({reason}); is it running?") from None
    except ValueError as e:
        raise SteerError(f"{what} at {url} answered with invalid JSON ({e})") from None


def generate_http(url: str, prompts: Sequence[str], params, timeout: float = 600.0,
                  request_size: int = 64) -> list[str]:
    """Continuations of ``prompts`` from the generation server at ``url``."""
    target = endpoint(url, "generate")
    out: list[str] = []
    for lo in range(0, len(prompts), request_size):
        chunk = list(prompts[lo:lo + request_size])
        answer = put_json(target, request_body(chunk, params), timeout, "generation server")
        sentences = answer.get("sentences") if isinstance(answer, dict) else None
        if not isinstance(sentences, list) or len(sentences) != len(chunk):
            raise SteerError(f"generation server at {target}: expected {len(chunk)} sentences in the answer")
        for prompt, sentence in zip(chunk, sentences):
            if not sentence.startswith(prompt):
                logger.warning("the server's sentence does not start with the prompt; cutting at len(prompt)")
            out.append(sentence[len(prompt):])
    return out


# ----------------------------------------------------------------------------------------------------------
# in process: a checkpoint
# ----------------------------------------------------------------------------------------------------------
def default_precision() -> str:
    """``bf16`` where it is native (a GPU: the seed serves in bf16), else ``32`` (``fast_precision``)."""
    from megatron_align.config.schema import fast_precision

    return fast_precision()


def start_single(seed: int) -> tuple[int, int]:
    """Megatron's groups for in-process use: the ones already started (their TP, PP), else TP=PP=1 in this
    single process."""
    from megatron.core import parallel_state as ps

    from megatron_align.distributed import start
    from megatron_align.distributed.launch import detect_launch_env

    if ps.model_parallel_is_initialized():
        return ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    world = detect_launch_env().world_size
    if world != 1:
        raise SteerError(f"in-process models run in one process (this job has {world} ranks): serve the "
                         "model (examples/megatron_gpt_eval.py / serve_reward_model.py) and give its url")
    start(1, 1, seed=seed)
    return 1, 1


def load_model(checkpoint: str | os.PathLike, kind: str, precision: Optional[str] = None):
    """``(model, tokenizer, model_cfg)`` of a ``kind`` (``gpt`` / ``reward``) checkpoint, loaded for inference
    in this process (``SteerError`` for the other kind)."""
    import dataclasses

    from megatron_align.models.checkpoint import checkpoint_kind, load_checkpoint, read_model_config
    from megatron_align.tokenizers import load_tokenizer_from_dir

    saved_kind = checkpoint_kind(checkpoint)  # CheckpointError (one line) for a missing / incomplete one
    if saved_kind != kind:
        need = "an attribute-conditioned SFT (gpt)" if kind == "gpt" else "a reward"
        raise SteerError(f"{checkpoint} is a {saved_kind} model checkpoint; this needs {need} model "
                         "checkpoint")
    saved = read_model_config(checkpoint)
    tp, pp = start_single(saved.seed)
    cfg = dataclasses.replace(saved, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              sequence_parallel=False, hidden_dropout=0.0, attention_dropout=0.0)
    tokenizer = load_tokenizer_from_dir(str(Path(checkpoint) / "tokenizer"))
    vocab = cfg.vocab_size or tokenizer.vocab_size
    precision = precision or default_precision()
    if kind == "gpt":
        from megatron_align.models.gpt import build_gpt_model

        model = build_gpt_model(cfg, vocab_size=vocab, precision=precision)
    else:
        from megatron_align.models.reward import build_reward_model

        model = build_reward_model(cfg, vocab_size=vocab, precision=precision)
    load_checkpoint(checkpoint, model)
    return model.eval(), tokenizer, cfg


def load_backend(checkpoint: str | os.PathLike, precision: Optional[str] = None, max_batch_size: int = 8):
    """A ``MegatronGenerationBackend`` over the ``gpt`` checkpoint, as the generation server builds it."""
    from megatron_align.servers.generation_server import make_backend

    model, tokenizer, cfg = load_model(checkpoint, "gpt", precision)
    return make_backend(model, tokenizer, cfg, max_batch_size)


def generate_local(backend, prompts: Sequence[str], params) -> list[str]:
    """Continuations of ``prompts`` from ``backend`` (a ``GenerationBackend`` with a tokenizer attached)."""
    from megatron_align.servers.generate_api import sentence_of

    if getattr(backend, "tokenizer", None) is None:
        raise SteerError("the generation backend has no tokenizer attached (needed for text prompts)")
    try:
        out = backend.generate(list(prompts), params)
    except ValueError as e:  # request too long for the context, bad sampling settings
        raise SteerError(str(e)) from None
    texts = []
    for i, prompt in enumerate(prompts):
        n, p = int(out.lengths[i]), int(out.prompt_lengths[i])
        ids = out.tokens[i, :n].tolist()  # prompt + response ids
        texts.append(sentence_of(backend.tokenizer, prompt, ids[:p], ids)[len(prompt):])
    return texts
