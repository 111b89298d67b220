"""NeMo-Aligner's ``serve_reward_model.py`` over HTTP: score sequences with a (multi-attribute) reward model.

``PUT``/``POST /infer`` takes the inputs of NeMo-Aligner's PyTriton ``reward_model`` (sent here as one JSON
object, not as Triton tensors): ``sentences`` (strings, tokenized here, ``add_EOS`` optional) or
``tokens`` + ``sequence_lengths`` (already tokenized, right-padded rows). It returns ``rewards``: one list of
``num_attributes`` values per sample, standardized as ``(r - mean) / std`` per attribute when
``model.reward_standardization.enable``; and ``exceeded``: whether the sample was longer than the model's
context and was cut to it (the reward then reads the last kept token), as NeMo-Aligner reports. Every rank
loads the reward model; rank 0 serves HTTP and merges concurrent requests; each batch runs on every
data-parallel replica's share in micro-batches of ``inference.micro_batch_size``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from megatron_align.scoring.standardize import Standardization, standardization_of
from megatron_align.servers.config import RMServeConfig
from megatron_align.servers.http import Text, TokenId

logger = logging.getLogger(__name__)


class RewardRequest(BaseModel):
    """The body of ``PUT /infer``: ``sentences``, or ``tokens`` (+ ``sequence_lengths``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sentences: Optional[list[Text]] = Field(None, min_length=1, description="Texts to score.")
    tokens: Optional[list[list[TokenId]]] = Field(None, min_length=1, description="Token-id rows to score.")
    sequence_lengths: Optional[list[TokenId]] = Field(None, description="Real length of each tokens row "
                                                                        "(default: the whole row).")
    add_EOS: bool = Field(False, description="Append the eos token to each of sentences before scoring.")


class RewardResponse(BaseModel):
    """The body of a successful ``PUT /infer``."""

    rewards: list[list[float]]
    exceeded: list[bool]


def sequences_of(req: RewardRequest, tokenizer, context: int, max_sentences: int) -> tuple[list, list]:
    """Token-id lists to score (cut to ``context``) and, per sample, whether it was cut."""
    from megatron_align.servers.http import RequestError

    if (req.sentences is None) == (req.tokens is None):
        raise RequestError("sentences", "give exactly one of sentences or tokens")
    if req.sentences is not None:
        if len(req.sentences) > max_sentences:
            raise RequestError("sentences", f"{len(req.sentences)} sequences; at most {max_sentences} per "
                                            "request (the server's inference.max_sentences_per_request)")
        if req.sequence_lengths is not None:
            raise RequestError("sequence_lengths", "goes with tokens, not with sentences")
        seqs = tokenizer.texts_to_ids(req.sentences, add_eos=req.add_EOS)
        name = "sentences"
    else:
        if len(req.tokens) > max_sentences:
            raise RequestError("tokens", f"{len(req.tokens)} sequences; at most {max_sentences} per request")
        lengths = req.sequence_lengths if req.sequence_lengths is not None else [len(r) for r in req.tokens]
        if len(lengths) != len(req.tokens):
            raise RequestError("sequence_lengths", f"{len(lengths)} lengths for {len(req.tokens)} token rows")
        seqs = []
        for i, (row, n) in enumerate(zip(req.tokens, lengths)):
            if not 1 <= n <= len(row):
                raise RequestError(f"sequence_lengths[{i}]",
                                   f"{n} is not in 1..{len(row)} (the row's length)")
            bad = next((t for t in row[:n] if not 0 <= t < tokenizer.vocab_size), None)
            if bad is not None:
                raise RequestError(f"tokens[{i}]", f"token id {bad} is outside the vocabulary "
                                                   f"(0..{tokenizer.vocab_size - 1})")
            seqs.append(list(row[:n]))
        name = "tokens"
    for i, s in enumerate(seqs):
        if not s:
            raise RequestError(f"{name}[{i}]", "empty sequence")
    exceeded = [len(s) > context for s in seqs]
    return [s[:context] for s in seqs], exceeded


class RewardWorker:
    """One replica's share of a batch: forward in micro-batches, then standardization."""

    def __init__(self, model, tokenizer, num_attributes: int, micro_batch_size: int, max_batch_size: int,
                 standardization: Optional[Standardization]):
        self.model = model
        self.tokenizer = tokenizer
        self.num_attributes = num_attributes
        self.micro_batch_size = micro_batch_size
        self.max_batch_size = max_batch_size
        self.standardization = standardization

    def compute(self, _payload: dict, seqs: list) -> list[list[float]]:
        from megatron_align.scoring.forward import rewards_of

        out: list[list[float]] = []
        for i in range(0, len(seqs), self.max_batch_size):
            out += rewards_of(self.model, seqs[i:i + self.max_batch_size], self.tokenizer.pad_id,
                              self.num_attributes, self.micro_batch_size)
        if self.standardization is not None:
            out = self.standardization.apply(out)
        return out


def build_app(cfg: RMServeConfig, replica, queue, dp_size: int):
    """The FastAPI app of rank 0."""
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from megatron_align.servers.batching import Job
    from megatron_align.servers.http import await_job, install_error_handlers

    app = FastAPI(title="megatron_align reward-model server",
                  description="NeMo-Aligner-compatible reward scoring over a megatron_align checkpoint.")
    install_error_handlers(app)
    ctx = replica.model_cfg.context_length()

    @app.api_route("/infer", methods=["PUT", "POST"], response_model=RewardResponse)
    async def infer(req: RewardRequest):
        """Rewards of each sequence, one value per attribute."""
        # tokenizing in a worker thread keeps the event loop (and /health) answering meanwhile
        seqs, exceeded = await run_in_threadpool(sequences_of, req, replica.tokenizer, ctx,
                                                 cfg.inference.max_sentences_per_request)
        rewards = await await_job(queue, Job(items=seqs, key="rm"))
        return {"rewards": rewards, "exceeded": exceeded}

    @app.get("/health")
    async def health():
        """Liveness and what is served."""
        m = replica.model_cfg
        return {"status": "ok", "model_name": cfg.inference.model_name, "model": cfg.rm_model_file,
                "num_attributes": m.num_attributes, "context_length": ctx,
                "reward_standardization": cfg.model.reward_standardization.enable,
                "tensor_model_parallel_size": m.tensor_model_parallel_size,
                "pipeline_model_parallel_size": m.pipeline_model_parallel_size, "data_parallel_size": dp_size,
                "queued_requests": len(queue), "batches_run": queue.stats["batches"],
                "requests_run": queue.stats["requests"]}

    return app


def run(cfg: RMServeConfig) -> int:
    """The whole job on this rank; returns the exit status."""
    from megatron_align.distributed.launch import shutdown
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.reward import build_reward_model
    from megatron_align.servers.batching import JobQueue
    from megatron_align.servers.control import ControlChannel
    from megatron_align.servers.loop import ReplicaLayout, serve_forever
    from megatron_align.servers.setup import start_http, start_replica

    cfg.validate()
    replica = start_replica(cfg.rm_model_file, cfg.model.tensor_model_parallel_size,
                            cfg.model.pipeline_model_parallel_size, cfg.trainer,
                            "model.tensor_model_parallel_size", "model.pipeline_model_parallel_size",
                            "rm_model_file", "reward")
    m = replica.model_cfg
    standardization = standardization_of(cfg.model.reward_standardization, m.num_attributes)
    ch = ControlChannel()
    ch.install_signal_handlers()
    layout = ReplicaLayout.from_parallel_state()
    inf = cfg.inference
    try:
        model = build_reward_model(m, vocab_size=m.vocab_size or replica.tokenizer.vocab_size,
                                   precision=cfg.trainer.precision)
        load_checkpoint(cfg.rm_model_file, model)
        worker = RewardWorker(model, replica.tokenizer, m.num_attributes, inf.micro_batch_size,
                              inf.max_batch_size, standardization)
        queue = None
        if ch.rank == 0:
            queue = JobQueue(inf.max_batch_size * layout.dp_size, inf.batch_wait_ms / 1000)
        with torch.no_grad():
            http = start_http(ch, lambda: build_app(cfg, replica, queue, layout.dp_size), inf)
            serve_forever(ch, layout, worker.compute, queue,
                          lambda jobs: {"items": [s for j in jobs for s in j.items]})
        if http is not None:
            http.stop()
        logger.info("rank %d: reward server stopped", ch.rank)
        return 0
    finally:
        shutdown()
