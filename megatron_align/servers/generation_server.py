"""NeMo's ``megatron_gpt_eval.py``: serve ``PUT /generate`` (``server=True``) or run ``prompts`` once.

Every rank loads the checkpoint at the requested TP/PP and builds the generation backend; rank 0 also serves
HTTP (FastAPI + uvicorn in a thread: ``PUT /generate``, ``GET /health``, the OpenAPI schema at
``/openapi.json`` and ``/docs``). Concurrent requests with the same sampling settings are merged into one
batch (``batching.py``); each batch is broadcast to every rank and spread over the data-parallel replicas
(``loop.py``). ``logprob`` / ``full_logprob`` come from one extra forward of the finished sequences
(``scoring.py``), so prompt tokens get theirs too, as in NeMo. SIGTERM / SIGINT on any rank stops all ranks
(exit status 0).
"""

from __future__ import annotations

import json
import logging

import torch

from megatron_align.generation.build import make_backend
from megatron_align.generation.interface import GenerationBackend, SamplingParams
from megatron_align.servers.config import GPTEvalConfig

# FastAPI reads the route's annotations from this module's globals (postponed annotations).
from megatron_align.servers.generate_api import GenerateRequest, GenerateResponse

logger = logging.getLogger(__name__)

class GenerationWorker:
    """Runs one replica's share of a batch: generation in rounds of ``max_batch_size``, then the log-prob
    forward when asked for."""

    def __init__(self, backend: GenerationBackend, model, tokenizer, model_cfg, max_batch_size: int):
        self.backend = backend
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.max_batch_size = max_batch_size

    def compute(self, payload: dict, prompts: list) -> list[dict]:
        """``payload["params"]``: the request's sampling fields; ``prompts``: token-id lists."""
        from megatron_align.scoring.forward import token_logprobs_of

        p = payload["params"]
        params = SamplingParams(
            greedy=p["greedy"], temperature=p["temperature"], top_k=p["top_k"], top_p=p["top_p"],
            repetition_penalty=p["repetition_penalty"], tokens_to_generate=p["tokens_to_generate"],
            min_tokens_to_generate=p["min_tokens_to_generate"], end_strings=list(p["end_strings"]),
            add_BOS=False, random_seed=p["random_seed"], compute_logprob=False)  # bos: added when tokenizing
        params.validate()
        results: list[dict] = []
        for i in range(0, len(prompts), self.max_batch_size):
            chunk = prompts[i:i + self.max_batch_size]
            if params.tokens_to_generate == 0:  # scoring the prompts only
                results += [{"ids": list(c), "prompt_len": len(c)} for c in chunk]
                continue
            out = self.backend.generate(chunk, params)
            for j in range(len(chunk)):
                length = int(out.lengths[j])
                results.append({"ids": out.tokens[j, :length].tolist(),
                                "prompt_len": int(out.prompt_lengths[j])})
        if p["compute_logprob"] or p["all_probs"]:
            lp, full = token_logprobs_of(self.model, [r["ids"] for r in results], self.tokenizer.pad_id,
                                         self.tokenizer.vocab_size, all_probs=p["all_probs"])
            for k, r in enumerate(results):
                r["logprob"] = lp[k]
                if full is not None:
                    r["full_logprob"] = full[k]
        return results


def build_app(cfg: GPTEvalConfig, replica, queue, dp_size: int):
    """The FastAPI app of rank 0."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from megatron_align.servers.batching import Job
    from megatron_align.servers.generate_api import (
        RequestLimits,
        build_response,
        merge_key,
        sampling_of,
        tokenize_prompts,
    )
    from megatron_align.servers.http import await_job, install_error_handlers

    app = FastAPI(title="megatron_align generation server",
                  description="NeMo-compatible PUT /generate over a megatron_align checkpoint.")
    install_error_handlers(app)
    ctx = replica.model_cfg.context_length()
    tok = replica.tokenizer

    limits = RequestLimits(cfg.max_sentences_per_request, cfg.max_generated_tokens_per_request,
                           cfg.max_all_probs_values, tok.vocab_size)

    @app.api_route("/generate", methods=["PUT", "POST"], response_model=GenerateResponse)
    async def generate(req: GenerateRequest):
        """Generate continuations of ``sentences`` (NeMo's fields; see the schemas)."""
        # tokenizing and building / encoding the response run in worker threads: the event loop (and
        # /health, and other requests' batching) keeps answering meanwhile
        prompt_ids = await run_in_threadpool(tokenize_prompts, req, tok, ctx, limits)
        job = Job(items=prompt_ids, key=merge_key(req), meta=sampling_of(req))
        results = await await_job(queue, job)
        return await run_in_threadpool(lambda: JSONResponse(build_response(tok, req, prompt_ids, results)))

    @app.get("/health")
    async def health():
        """Liveness and what is served."""
        m = replica.model_cfg
        return {"status": "ok", "model": cfg.gpt_model_file, "context_length": ctx,
                "tensor_model_parallel_size": m.tensor_model_parallel_size,
                "pipeline_model_parallel_size": m.pipeline_model_parallel_size, "data_parallel_size": dp_size,
                "max_batch_size": cfg.max_batch_size, "queued_requests": len(queue),
                "batches_run": queue.stats["batches"], "requests_run": queue.stats["requests"]}

    return app


def _load_model(cfg: GPTEvalConfig, replica):
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.gpt import build_gpt_model

    m = replica.model_cfg
    model = build_gpt_model(m, vocab_size=m.vocab_size or replica.tokenizer.vocab_size,
                            precision=cfg.trainer.precision)
    load_checkpoint(cfg.gpt_model_file, model)
    model.eval()
    return model


def _offline(cfg: GPTEvalConfig, worker: GenerationWorker, ch, layout) -> None:
    """NeMo's default mode: generate for ``prompts`` with ``inference.*`` and print the response (rank 0)."""
    from pydantic import ValidationError

    from megatron_align.config import ConfigError
    from megatron_align.servers.generate_api import (
        RequestLimits,
        build_response,
        sampling_of,
        tokenize_prompts,
    )
    from megatron_align.servers.http import RequestError
    from megatron_align.servers.loop import run_on_replicas

    inf = cfg.inference
    fields = {k: getattr(inf, k) for k in ("greedy", "top_k", "top_p", "temperature", "add_BOS",
                                           "tokens_to_generate", "all_probs", "repetition_penalty",
                                           "min_tokens_to_generate", "compute_logprob", "random_seed")}
    try:
        req = GenerateRequest.model_validate(
            {"sentences": list(cfg.prompts), "end_strings": list(inf.end_strings), **fields}, strict=False)
        ids = tokenize_prompts(req, worker.tokenizer, worker.model_cfg.context_length(),
                               RequestLimits(len(req.sentences)))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        key = key if key.startswith("sentences") else f"inference.{key}"
        raise ConfigError(f"{key.replace('sentences', 'prompts')}: {err['msg']}", key=key) from None
    except RequestError as exc:
        raise ConfigError(str(exc).replace("sentences", "prompts"), key=exc.field) from None
    payload = {"items": ids, "params": sampling_of(req)}
    results = run_on_replicas(ch, layout, payload, worker.compute)
    if ch.rank == 0:
        stars = "*" * 27
        body = json.dumps(build_response(worker.tokenizer, req, ids, results))
        print(f"{stars}\n{body}\n{stars}", flush=True)


def run(cfg: GPTEvalConfig) -> int:
    """The whole job on this rank; returns the exit status."""
    from megatron_align.distributed.launch import shutdown
    from megatron_align.servers.batching import JobQueue
    from megatron_align.servers.control import ControlChannel
    from megatron_align.servers.loop import ReplicaLayout, serve_forever
    from megatron_align.servers.setup import start_http, start_replica

    cfg.validate()
    replica = start_replica(cfg.gpt_model_file, cfg.tensor_model_parallel_size,
                            cfg.pipeline_model_parallel_size, cfg.trainer, "tensor_model_parallel_size",
                            "pipeline_model_parallel_size", "gpt_model_file", "gpt")
    ch = ControlChannel()
    ch.install_signal_handlers()
    layout = ReplicaLayout.from_parallel_state()
    model = _load_model(cfg, replica)
    backend = make_backend(model, replica.tokenizer, replica.model_cfg, cfg.max_batch_size)
    worker = GenerationWorker(backend, model, replica.tokenizer, replica.model_cfg, cfg.max_batch_size)
    try:
        with torch.no_grad():
            if not cfg.server:
                _offline(cfg, worker, ch, layout)
                return 0
            queue = None
            if ch.rank == 0:
                queue = JobQueue(cfg.max_batch_size * layout.dp_size, cfg.batch_wait_ms / 1000)
            http = start_http(ch, lambda: build_app(cfg, replica, queue, layout.dp_size), cfg)
            serve_forever(ch, layout, worker.compute, queue,
                          lambda jobs: {"items": [p for j in jobs for p in j.items], "params": jobs[0].meta})
            if http is not None:
                http.stop()
            logger.info("rank %d: server stopped", ch.rank)
            return 0
    finally:
        worker.backend.close()
        shutdown()
