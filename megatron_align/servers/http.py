"""HTTP plumbing shared by both servers: the field types their request models share, JSON errors that name
the field, the body-size limit, the header timeout, and uvicorn running in a thread of rank 0 (the main
thread keeps the serving loop and the signal handlers).

Error bodies are ``{"error": "<field>: <what is wrong>", "field": "<field>"}``: 422 for a request that does
not validate (wrong type, missing field, out of range, too many sentences, prompt longer than the context,
a response over the server's size limits), 400 for a body that is not JSON (invalid UTF-8, nested too deep),
413 for a body over the size limit, 503 while shutting down, 500 when running the batch failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Annotated, Optional

from pydantic import AfterValidator, Field

logger = logging.getLogger(__name__)

"""Largest ``random_seed`` (torch's generators take a signed 64-bit seed)."""


def _unicode_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (a lone surrogate at character {e.start})") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]
"""A string every tokenizer can take: no lone surrogates (JSON can carry ``"\ud800"``, UTF-8 cannot)."""

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
"""A token id as a request may send it (checked against the vocabulary later)."""


class RequestError(Exception):
    """A request the server refuses: ``status`` and a message naming ``field``."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.status = status


def error_body(message: str, field: Optional[str] = None) -> dict:
    """The JSON body of every error response."""
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return body


def _loc_name(loc) -> str:
    if tuple(loc) == ("body",):
        return "body"
    parts = [str(p) for p in loc if p != "body"]
    name = ""
    for p in parts:
        name += f"[{p}]" if p.isdigit() else (f".{p}" if name else p)
    return name


def install_error_handlers(app) -> None:
    """422 / 4xx / 500 / 503 JSON bodies in the module's format, for FastAPI's validation errors too."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from megatron_align.servers.batching import ServerClosing
    from megatron_align.servers.loop import BatchFailed

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _loc_name(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            field, msg = "body", f"not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
        elif first.get("type") == "model_attributes_type" or (not field and first.get("type") == "dict_type"):
            field, msg = "body", "must be a JSON object"
        elif first.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif field == "body" and first.get("type") == "missing":
            msg = "empty; send a JSON object"
        else:
            msg = first.get("msg", "invalid")
        body = error_body(f"{field}: {msg}" if field else msg, field or None)
        body["detail"] = [{"field": _loc_name(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return JSONResponse(status_code=422, content=body)

    @app.exception_handler(HTTPException)
    async def _http(_request, exc: HTTPException):
        # FastAPI answers a body it cannot parse (invalid UTF-8, nesting deeper than Python's JSON reader
        # goes) with a bare 400; unknown paths and methods come here too.
        if exc.status_code == 400:
            return JSONResponse(status_code=400, content=error_body(
                "body: not valid JSON (invalid UTF-8, or nested too deep)", "body"))
        return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail)),
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def _refused(_request, exc: RequestError):
        return JSONResponse(status_code=exc.status, content=error_body(str(exc), exc.field))

    @app.exception_handler(ServerClosing)
    async def _closing(_request, exc: ServerClosing):
        return JSONResponse(status_code=503, content=error_body(str(exc)))

    @app.exception_handler(BatchFailed)
    async def _failed(_request, exc: BatchFailed):
        return JSONResponse(status_code=500, content=error_body(f"generation failed: {exc}"))


class BodyLimit:
    """ASGI wrapper: answer 413 to a request body over ``max_bytes`` (declared or streamed)."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reply_413(self, send) -> None:
        body = json.dumps(error_body(f"body: request larger than {self.max_bytes} bytes (the server's "
                                     "max_request_bytes)", "body")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reply_413(send)
        seen = 0
        too_large = started = False

        async def limited_receive():
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise BodyLimit._TooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if too_large:
                return  # whatever the app makes of the aborted body (FastAPI: a 400), the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyLimit._TooLarge:
            pass
        if too_large and not started:
            await self._reply_413(send)


async def await_job(queue, job) -> list:
    """Queue ``job`` and wait for its results (raises what the serving loop failed it with)."""
    job.loop = asyncio.get_running_loop()
    job.future = job.loop.create_future()
    queue.submit(job)
    return await job.future


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete ``seconds`` after
    it opened or after its previous response (uvicorn itself arms only the idle keep-alive timer, after a
    response, so a client that connects and sends nothing, or half a header, would hold its connection
    forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _header_timeout(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


def url_of(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 literal in brackets (``http://[::1]:5555``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class HTTPThread:
    """uvicorn serving ``app`` from a daemon thread; ``stop()`` ends it (in-flight requests finish)."""

    def __init__(self, app, host: str, port: int, max_request_bytes: int, header_timeout_s: float = 10.0,
                 keep_alive_timeout_s: float = 5.0):
        import uvicorn

        config = uvicorn.Config(BodyLimit(app, max_request_bytes), host=host, port=port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                                http=header_timeout_protocol(header_timeout_s),
                                timeout_keep_alive=keep_alive_timeout_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        """Start serving; raise if uvicorn could not bind the port."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise OSError("the HTTP server did not start (is the port in use? see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("the HTTP server did not start in time")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
