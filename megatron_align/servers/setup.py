"""Start-up shared by both servers: the layout from the command line or the checkpoint, process groups, the
checkpoint's model config and tokenizer, and the start / stop of rank 0's HTTP thread on every rank."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from types import SimpleNamespace

from megatron_align.config import ConfigError, ModelConfig, UserError
from megatron_align.config.validate import check_launch_matches, validate_layout

logger = logging.getLogger(__name__)


class ServerError(UserError):
    """The server cannot start (e.g. its port is taken): one line, exit status 2."""

    prefix = "server error"


@dataclasses.dataclass
class Replica:
    """What a server process knows after start-up."""

    model_cfg: ModelConfig
    tokenizer: object
    rank: int
    world_size: int


def start_replica(ckpt: str, tp: int, pp: int, trainer, tp_key: str, pp_key: str, ckpt_key: str,
                  kind: str) -> Replica:
    """Check the checkpoint and the layout, start torch.distributed + megatron groups, read the checkpoint's
    model config and tokenizer. ``tp``/``pp`` of -1 mean "as saved in the checkpoint"; ``kind`` is the model
    the server needs (``gpt`` or ``reward``)."""
    from megatron_align.distributed import start
    from megatron_align.distributed.launch import detect_launch_env
    from megatron_align.models.checkpoint import read_metadata, read_model_config
    from megatron_align.tokenizers import load_tokenizer_from_dir

    saved_kind = read_metadata(ckpt).get("model_kind")  # also: a clear error for a missing checkpoint
    if saved_kind is not None and saved_kind != kind:
        raise ConfigError(f"{ckpt_key}={ckpt} is a {saved_kind} model checkpoint; this server needs a {kind} "
                          "model", key=ckpt_key)
    saved = read_model_config(ckpt)
    tp = saved.tensor_model_parallel_size if tp == -1 else tp
    pp = saved.pipeline_model_parallel_size if pp == -1 else pp
    model_cfg = dataclasses.replace(saved, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                    sequence_parallel=False, hidden_dropout=0.0, attention_dropout=0.0)
    world = detect_launch_env().world_size
    check_launch_matches(SimpleNamespace(trainer=trainer), world)
    try:
        validate_layout(SimpleNamespace(trainer=trainer, model=model_cfg), world)
    except ConfigError as err:  # name the keys of this command line, not the training ones
        err.message = err.message.replace("model.tensor_model_parallel_size", tp_key).replace(
            "model.pipeline_model_parallel_size", pp_key)
        raise
    tok_dir = Path(ckpt) / "tokenizer"
    tokenizer = load_tokenizer_from_dir(str(tok_dir))
    env = start(tp, pp, seed=saved.seed)
    return Replica(model_cfg, tokenizer, env.rank, env.world_size)


def start_http(ch, app_factory, serving):
    """Collective: rank 0 starts serving ``app_factory()`` on ``serving.host``/``serving.port`` with its
    limits (body size, header and keep-alive timeouts); every rank raises ``ServerError`` if it could not.
    Returns rank 0's ``HTTPThread`` (None elsewhere)."""
    from megatron_align.servers.http import HTTPThread, url_of

    url = url_of(serving.host, serving.port)
    http, failure = None, ""
    if ch.rank == 0:
        try:
            http = HTTPThread(app_factory(), serving.host, serving.port, serving.max_request_bytes,
                              serving.header_timeout_s, serving.keep_alive_timeout_s)
            http.start()
        except (OSError, TimeoutError) as exc:
            failure = f"cannot serve on {url}: {exc}"
    if ch.all_max(int(bool(failure))):
        raise ServerError(failure or "rank 0 could not start the HTTP server")
    pids = ch.gather_json(os.getpid())
    if ch.rank == 0:
        # Scripts (and the tests) wait for this line; SIGTERM to any of these PIDs stops the job.
        print(f"server ready: {url} (PID {os.getpid()}; ranks' PIDs {pids})", flush=True)
    return http
