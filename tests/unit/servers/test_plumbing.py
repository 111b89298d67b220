"""Server plumbing without a model: request merging (``JobQueue``), data-parallel slices, the serving loop on
one process (results back to each request in order, failures and shutdown reported), reward
standardization config checks, and the HTTP layer (field-naming errors, body limit, a taken port)."""

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from megatron_align.config import ConfigError
from megatron_align.scoring.standardize import standardization_of
from megatron_align.servers.batching import Job, JobQueue, ServerClosing
from megatron_align.servers.config import RewardStandardization
from megatron_align.servers.control import ControlChannel
from megatron_align.servers.http import HTTPThread, RequestError, install_error_handlers
from megatron_align.servers.loop import BatchFailed, ReplicaLayout, run_on_replicas, serve_forever


def test_queue_merges_compatible_jobs_up_to_max_items_in_order():
    q = JobQueue(max_items=5, wait_s=0)
    jobs = [Job([1, 2], "a"), Job([3], "b"), Job([4, 5], "a"), Job([6, 7], "a"), Job([8], None),
            Job([9], "b")]
    for j in jobs:
        q.submit(j)
    assert q.next_batch(0.01) == [jobs[0], jobs[2]]  # a: 2 + 2 items; the next "a" (2 more) would make 6
    assert q.next_batch(0.01) == [jobs[1], jobs[5]]  # b, b
    assert q.next_batch(0.01) == [jobs[3]]
    assert q.next_batch(0.01) == [jobs[4]]  # key None: alone
    assert q.next_batch(0.01) == []
    big = Job(list(range(9)), "a")
    q.submit(big)
    q.submit(Job([1], "a"))
    assert q.next_batch(0.01) == [big]  # larger than max_items: runs alone
    assert q.stats == {"batches": 5, "requests": 7}
    left = q.close()
    assert len(left) == 1
    with pytest.raises(ServerClosing):
        q.submit(Job([1], "a"))


def test_queue_waits_for_company():
    q = JobQueue(max_items=8, wait_s=0.3)
    first, second = Job([1], "k"), Job([2], "k")
    q.submit(first)
    threading.Timer(0.05, q.submit, args=(second,)).start()
    assert q.next_batch(0.01) == [first, second]


@pytest.mark.parametrize("n,dp", [(0, 2), (1, 2), (5, 2), (7, 3), (32, 4)])
def test_replica_slices_cover_items_contiguously(n, dp):
    covered = []
    for rank in range(dp):
        lo, hi = ReplicaLayout(rank, dp, True).slice_of(n)
        covered += list(range(lo, hi))
        assert n // dp <= hi - lo <= n // dp + 1
    assert covered == list(range(n))


def test_run_on_replicas_single_process_results_and_errors():
    ch, layout = ControlChannel(), ReplicaLayout()  # one process: no collectives
    assert ch.world == 1
    out = run_on_replicas(ch, layout, {"items": [1, 2, 3]}, lambda _p, xs: [x * 10 for x in xs])
    assert out == [10, 20, 30]

    def boom(_p, _xs):
        raise ValueError("top_k: must be >= 0")

    with pytest.raises(BatchFailed, match="top_k"):
        run_on_replicas(ch, layout, {"items": [1]}, boom)


def test_serve_forever_answers_each_request_then_stops():
    ch = ControlChannel()
    q = JobQueue(max_items=16, wait_s=0.05)
    seen_batches = []

    def compute(payload, items):
        seen_batches.append(list(items))
        if -1 in items:
            raise RuntimeError("bad item")
        return [x + 100 for x in items]

    async def client():
        loop = asyncio.get_running_loop()
        jobs = [Job([1, 2], "k"), Job([3], "k"), Job([-1], "other"), Job([4], "k")]
        for j in jobs:
            j.loop, j.future = loop, loop.create_future()
            q.submit(j)
        outs = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        late = Job([5], "k")
        late.loop, late.future = loop, loop.create_future()
        q.submit(late)
        ch.stop_requested.set()  # what SIGTERM does
        try:
            outs.append(await asyncio.wait_for(late.future, 10))
        except ServerClosing as exc:
            outs.append(exc)
        except Exception as exc:  # noqa: BLE001
            outs.append(exc)
        return outs

    result = {}
    t = threading.Thread(target=lambda: result.update(out=asyncio.run(client())))
    t.start()
    serve_forever(ch, ReplicaLayout(), compute, q, lambda jobs: {"items": [x for j in jobs for x in j.items]})
    t.join(10)
    out = result["out"]
    assert out[0] == [101, 102] and out[1] == [103] and out[3] == [104]
    assert isinstance(out[2], BatchFailed) and "bad item" in str(out[2])
    assert [1, 2, 3, 4] in seen_batches  # the three "k" requests ran as one batch
    # the request queued when the stop came was either run before the stop tick or refused with 503
    assert out[4] == [105] or isinstance(out[4], ServerClosing)


def test_reward_standardization_values():
    assert standardization_of(RewardStandardization(), 3) is None
    st = standardization_of(RewardStandardization(True, 1.0, [1, 2, 4]), 3)
    assert st.mean == (1.0, 1.0, 1.0) and st.std == (1.0, 2.0, 4.0)
    assert st.apply([[2.0, 3.0, 5.0], [1.0, 1.0, 1.0]]) == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ConfigError, match="mean"):
        standardization_of(RewardStandardization(True, None, 1.0), 3)
    with pytest.raises(ConfigError, match="3 numbers"):
        standardization_of(RewardStandardization(True, [1, 2], 1.0), 3)
    with pytest.raises(ConfigError, match="> 0"):
        standardization_of(RewardStandardization(True, 0.0, [1, 0, 1]), 3)


# ----------------------------------------------------------------------------------------------------------
# HTTP: errors naming the field, the body limit, a taken port (a tiny app, real sockets, no model)
# ----------------------------------------------------------------------------------------------------------
class _Echo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n: int = Field(ge=0)
    names: list[str] = Field(min_length=1)


@pytest.fixture(scope="module")
def echo_server():
    app = FastAPI()
    install_error_handlers(app)

    @app.put("/echo")
    async def echo(req: _Echo):
        if req.n == 7:
            raise RequestError("n", "seven is refused")
        return {"n": req.n}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = HTTPThread(app, "127.0.0.1", port, max_request_bytes=200)
    http.start()
    yield port
    http.stop()


def _call(port, body: bytes):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/echo", data=body, method="PUT",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body,status,field", [
    (b'{"n": 1, "names": ["a"]}', 200, None),
    (b'{"names": ["a"]}', 422, "n"),
    (b'{"n": "1", "names": ["a"]}', 422, "n"),
    (b'{"n": -1, "names": ["a"]}', 422, "n"),
    (b'{"n": 1, "names": ["a", 2]}', 422, "names[1]"),
    (b'{"n": 1, "names": ["a"], "x": 0}', 422, "x"),
    (b'{"n": 7, "names": ["a"]}', 422, "n"),
    (b'{"n": 1,', 422, "body"),
    (b'{"n": 1, "names": ["' + b"a" * 300 + b'"]}', 413, "body"),
])
def test_http_errors_name_the_field(echo_server, body, status, field):
    got_status, got = _call(echo_server, body)
    assert got_status == status, got
    if field is not None:
        assert got["field"] == field and got["error"].startswith(field), got


def test_http_thread_refuses_a_taken_port(echo_server):
    with pytest.raises(OSError, match="did not start"):
        HTTPThread(FastAPI(), "127.0.0.1", echo_server, max_request_bytes=10).start()


@pytest.mark.parametrize("host, url", [("127.0.0.1", "http://127.0.0.1:5555"), ("::1", "http://[::1]:5555"),
                                       ("localhost", "http://localhost:5555"), ("fe80::1", "http://[fe80::1]:5555")])
def test_ready_line_url_brackets_ipv6_literals(host, url):
    from megatron_align.servers.http import url_of

    assert url_of(host, 5555) == url
