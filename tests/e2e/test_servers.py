"""The HTTP servers end to end: ``examples/nlp/language_modeling/megatron_gpt_eval.py server=True`` and
``examples/nlp/gpt/serve_reward_model.py``, each started once for the module as a subprocess on a free
loopback port over tiny checkpoints, with the seed's command-line keys.

Checked against independent in-process references (tests/naive_generation.py: full-recompute greedy loop and
full-forward log-softmax; the reward model's own forward): the seed's ``get_answer`` helper works unchanged;
NeMo's response fields and values; every bad request gets a 4xx JSON error naming the field and the server
keeps serving; 32 concurrent requests equal the sequential answers; rewards per attribute (standardized as
configured); the offline prompts mode; one-line config errors; SIGTERM exits 0.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest
import requests
import torch

from megatron_align.config import load_config
from megatron_align.servers.config import GPTEvalConfig, RMServeConfig
from tests import naive_generation as ref
from tests.helpers import ROOT, _clean_env
from tests.servers_common import (
    CONTEXT,
    GEN_SCRIPT,
    RM_SCRIPT,
    ServerProcess,
    free_port,
    get_answer,
    python_cmd,
)

RM_MEAN, RM_STD = [0.5, -1.0, 2.0], [2.0, 0.5, 4.0]
TEMPLATE = ("<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.\n"
            "<extra_id_1>User\n{question}\n<extra_id_1>Assistant\n<extra_id_2>{values}\n")
VALUES = "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4"
QUESTION = "Write a poem on NVIDIA in the style of Shakespeare"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, megatron_single):
    from tests.servers_common import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("server_ckpts"))


@pytest.fixture(scope="module")
def servers(ckpts):
    """Both servers and one offline-mode run, started together (their start-ups overlap)."""
    gen_port, rm_port = free_port(), free_port()
    gen = ServerProcess(python_cmd(
        GEN_SCRIPT, f"gpt_model_file={ckpts['policy']}", "pipeline_model_parallel_split_rank=0",
        "server=True", "tensor_model_parallel_size=1", "pipeline_model_parallel_size=1",
        "trainer.precision=32", "trainer.devices=1", "trainer.num_nodes=1", "web_server=False",
        f"port={gen_port}", "max_sentences_per_request=8", "max_request_bytes=20000", "max_batch_size=32",
        "max_generated_tokens_per_request=200", "max_all_probs_values=100000", "header_timeout_s=2",
        "keep_alive_timeout_s=1"))
    rm = ServerProcess(python_cmd(
        RM_SCRIPT, f"rm_model_file={ckpts['rm']}", "trainer.num_nodes=1", "trainer.devices=1",
        "++model.tensor_model_parallel_size=1", "++model.pipeline_model_parallel_size=1",
        "inference.micro_batch_size=2", f"inference.port={rm_port}", "trainer.precision=32",
        "model.reward_standardization.enable=True", f"model.reward_standardization.mean={RM_MEAN}",
        f"model.reward_standardization.std={RM_STD}", "inference.max_sentences_per_request=16"))
    offline = subprocess.Popen(python_cmd(
        GEN_SCRIPT, f"gpt_model_file={ckpts['policy']}", "trainer.precision=32", "inference.greedy=True",
        "inference.add_BOS=False", "inference.tokens_to_generate=4", "inference.compute_logprob=True",
        "inference.repetition_penalty=1.0",  # explicit (NeMo's conf says 1.2): the reference is argmax
        "prompts=['Q: How are you?','In days of yore']"), env=_clean_env(), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        gen.wait_ready()
        rm.wait_ready()
        yield {"gen": gen, "rm": rm, "gen_url": f"http://127.0.0.1:{gen_port}", "gen_port": gen_port,
               "rm_url": f"http://127.0.0.1:{rm_port}", "offline": offline}
    finally:
        gen.kill()
        rm.kill()
        if offline.poll() is None:
            offline.kill()


@pytest.fixture(scope="module")
def policy(ckpts):
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.gpt import build_gpt_model

    model = build_gpt_model(ckpts["policy_cfg"], vocab_size=ckpts["tokenizer"].vocab_size)
    load_checkpoint(ckpts["policy"], model)
    return model


@pytest.fixture(scope="module")
def reward_model(ckpts):
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.reward import build_reward_model

    model = build_reward_model(ckpts["rm_cfg"], vocab_size=ckpts["tokenizer"].vocab_size)
    load_checkpoint(ckpts["rm"], model)
    return model.eval()


def _put(url, body, **kw):
    return requests.put(f"{url}/generate", json=body, timeout=120, **kw)


# ----------------------------------------------------------------------------------------------------------
# generation server
# ----------------------------------------------------------------------------------------------------------
def test_seed_get_answer_helper_works_unchanged(servers, ckpts, policy):
    tok = ckpts["tokenizer"]
    answer = get_answer(QUESTION, 8, VALUES, eval_port=servers["gen_port"])
    prompt = TEMPLATE.format(question=QUESTION, values=VALUES)
    ids = ref.greedy(policy, tok, tok.text_to_ids(prompt), 8, end_strings=["<extra_id_1>"])
    expected_sentence = prompt + tok.ids_to_text(ids)[len(tok.ids_to_text(tok.text_to_ids(prompt))):]
    # the seed slices with the *template's* length: what it gets is the sentence past that many characters
    assert answer == expected_sentence[len(TEMPLATE):]
    res = _put(servers["gen_url"], {"sentences": [prompt], "tokens_to_generate": 8, "top_k": 1,
                                    "greedy": True, "end_strings": ["<extra_id_1>"]}).json()
    assert res["token_ids"][0] == ids
    assert res["sentences"][0] == expected_sentence and res["sentences"][0].startswith(prompt)


def test_response_fields_and_logprobs_match_reference(servers, ckpts, policy):
    tok = ckpts["tokenizer"]
    prompts = ["Q: How are you?", "With graphics cards, it did astound"]
    r = _put(servers["gen_url"], {"sentences": prompts, "tokens_to_generate": 5, "greedy": True,
                                  "compute_logprob": True, "add_BOS": True})
    assert r.status_code == 200, r.text
    res = r.json()
    assert set(res) == {"sentences", "tokens", "token_ids", "logprob", "offsets"}  # no full_logprob
    for i, p in enumerate(prompts):
        ids = ref.greedy(policy, tok, tok.text_to_ids(p, add_bos=True), 5)
        assert res["token_ids"][i] == ids and ids[0] == tok.bos_id
        assert res["sentences"][i].startswith(p)
        expected_lp, _ = ref.logprobs(policy, ids)
        assert len(res["logprob"][i]) == len(ids) - 1
        torch.testing.assert_close(torch.tensor(res["logprob"][i]), torch.tensor(expected_lp), atol=1e-4,
                                   rtol=0)
        texts = res["tokens"][i]
        assert len(texts) == len(ids) and texts[0] == "<s>"
        assert "".join(texts[1:]) == tok.ids_to_text(ids)  # token texts add up to the decoded sequence
        assert res["offsets"][i] == [sum(len(t) for t in texts[:k]) for k in range(len(texts))]
    plain = _put(servers["gen_url"], {"sentences": prompts[:1], "tokens_to_generate": 2,
                                      "greedy": True}).json()
    assert plain["logprob"] is None and "full_logprob" not in plain


def test_all_probs_returns_full_logprob(servers, ckpts, policy):
    tok = ckpts["tokenizer"]
    res = _put(servers["gen_url"], {"sentences": ["In days of yore"], "tokens_to_generate": 3, "greedy": True,
                                    "all_probs": True, "compute_logprob": True}).json()
    ids, full = res["token_ids"][0], torch.tensor(res["full_logprob"][0])  # [len-1, vocab]
    assert full.shape == (len(ids) - 1, tok.vocab_size)
    _, expected = ref.logprobs(policy, ids)
    torch.testing.assert_close(full, expected[:, :tok.vocab_size], atol=1e-4, rtol=0)
    picked = full[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(picked, torch.tensor(res["logprob"][0]), atol=1e-5, rtol=0)


def test_tokens_to_generate_zero_scores_the_prompt(servers, ckpts, policy):
    tok = ckpts["tokenizer"]
    res = _put(servers["gen_url"], {"sentences": ["Q: How big is the universe?"], "tokens_to_generate": 0,
                                    "compute_logprob": True}).json()
    ids = tok.text_to_ids("Q: How big is the universe?")
    assert res["token_ids"] == [ids] and res["sentences"] == ["Q: How big is the universe?"]
    torch.testing.assert_close(torch.tensor(res["logprob"][0]), torch.tensor(ref.logprobs(policy, ids)[0]),
                               atol=1e-4, rtol=0)


BAD_REQUESTS = [
    ({"tokens_to_generate": 4}, 422, "sentences"),
    ({"sentences": "Q: How are you?"}, 422, "sentences"),
    ({"sentences": []}, 422, "sentences"),
    ({"sentences": ["a"] * 9}, 422, "sentences"),
    ({"sentences": [1, 2]}, 422, "sentences[0]"),
    ({"sentences": [""]}, 422, "sentences[0]"),
    ({"sentences": ["ok", "a " * 400]}, 422, "sentences[1]"),
    ({"sentences": ["In days of yore"], "tokens_to_generate": CONTEXT}, 422, "tokens_to_generate"),
    ({"sentences": ["x"], "tokens_to_generate": -1}, 422, "tokens_to_generate"),
    ({"sentences": ["x"], "tokens_to_generate": "5"}, 422, "tokens_to_generate"),
    ({"sentences": ["x"], "greedy": "yes"}, 422, "greedy"),
    ({"sentences": ["x"], "temperature": 0}, 422, "temperature"),
    ({"sentences": ["x"], "top_p": 1.5}, 422, "top_p"),
    ({"sentences": ["x"], "end_strings": "<extra_id_1>"}, 422, "end_strings"),
    ({"sentences": ["x"], "min_tokens_to_generate": 5, "tokens_to_generate": 2}, 422,
     "min_tokens_to_generate"),
    ({"sentences": ["x"], "max_tokens": 5}, 422, "max_tokens"),
    ({"sentences": ["x"], "random_seed": -3}, 422, "random_seed"),
    ({"sentences": ["x"], "random_seed": 2**64}, 422, "random_seed"),
    ({"sentences": ["x"], "top_k": 2**40}, 422, "top_k"),
    ({"sentences": ["a\ud800b"]}, 422, "sentences[0]"),
    ({"sentences": ["x"], "end_strings": ["\udfff"]}, 422, "end_strings[0]"),
    ({"sentences": ["x"] * 4, "tokens_to_generate": 60}, 422, "tokens_to_generate"),  # 240 > 200
    ({"sentences": ["In days of yore"] * 2, "tokens_to_generate": 100, "all_probs": True}, 422, "all_probs"),
]


@pytest.mark.parametrize("body,status,field", BAD_REQUESTS, ids=[f for _, _, f in BAD_REQUESTS])
def test_bad_request_names_the_field_and_server_stays_up(servers, body, status, field):
    r = _put(servers["gen_url"], body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and err["error"].startswith(field), err
    assert requests.get(f"{servers['gen_url']}/health", timeout=30).json()["status"] == "ok"


def test_malformed_and_oversized_bodies(servers):
    url = f"{servers['gen_url']}/generate"
    r = requests.put(url, data=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "body"
    r = requests.put(url, data=b"[1, 2]", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "body"
    for data, status in ((b'{"sentences": ["\xff\xfe"]}', 400), (b"[" * 9000 + b"]" * 9000, 400),
                         (b"", 422)):  # invalid UTF-8, nested deeper than Python's JSON reader, empty
        r = requests.put(url, data=data, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == status and r.json()["field"] == "body", (data[:20], r.status_code, r.text)
    r = _put(servers["gen_url"], {"sentences": ["x" * 30000]})  # over max_request_bytes=20000
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():  # no content-length: the limit applies to the streamed bytes
        for _ in range(30):
            yield b" " * 1000

    r = requests.put(url, data=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    ok = _put(servers["gen_url"], {"sentences": ["Q: How are you?"], "tokens_to_generate": 1, "greedy": True})
    assert ok.status_code == 200


def _closed_by_server(sock, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_half_open_and_idle_connections_are_closed(servers):
    """header_timeout_s=2: a connection that sends half a header is closed; keep_alive_timeout_s=1: an idle
    connection after its response is closed."""
    host, port = "127.0.0.1", servers["gen_port"]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"PUT /generate HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(sock, within=15)
    with socket.create_connection((host, port), timeout=10) as sock:  # connects and says nothing
        assert _closed_by_server(sock, within=15)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(30)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(sock, within=15)
    assert requests.get(f"{servers['gen_url']}/health", timeout=30).json()["status"] == "ok"


def test_event_loop_answers_while_a_large_request_is_tokenized(servers):
    """Four 4 MB texts to the reward server take seconds to tokenize; a /health sent meanwhile answers at
    once (it used to wait until tokenization, run on the event loop, was done)."""
    done = {}

    def big():
        body = {"sentences": ["many words here " * 250_000] * 4}
        start = time.monotonic()
        r = requests.put(f"{servers['rm_url']}/infer", json=body, timeout=300)
        done["big"] = (time.monotonic() - start, r.status_code)

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(1.5)  # the body is sent and parsed; tokenization is under way
    start = time.monotonic()
    health = requests.get(f"{servers['rm_url']}/health", timeout=120)
    latency = time.monotonic() - start
    thread.join(timeout=300)
    assert health.status_code == 200 and done["big"][1] == 200
    assert latency < 0.2 * done["big"][0], (latency, done["big"][0])


def test_32_concurrent_requests_equal_sequential_answers(servers):
    prompts = ["Q: How are you?", "In days of yore", "With graphics cards", "The answer is forty two."]
    body = {"tokens_to_generate": 6, "greedy": True, "top_k": 1, "end_strings": ["<extra_id_1>"]}
    sequential = {p: _put(servers["gen_url"], {"sentences": [p], **body}).json() for p in prompts}
    before = requests.get(f"{servers['gen_url']}/health", timeout=30).json()
    results, errors = [None] * 32, []

    def worker(i):
        try:
            r = _put(servers["gen_url"], {"sentences": [prompts[i % 4]], **body})
            results[i] = (r.status_code, r.json())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i, (status, res) in enumerate(results):
        assert status == 200, res
        assert res == sequential[prompts[i % 4]], i
    after = requests.get(f"{servers['gen_url']}/health", timeout=30).json()
    assert after["requests_run"] - before["requests_run"] == 32
    assert after["batches_run"] - before["batches_run"] < 32  # requests were merged into shared batches


def test_health_and_openapi(servers):
    health = requests.get(f"{servers['gen_url']}/health", timeout=30).json()
    assert health["status"] == "ok" and health["context_length"] == CONTEXT
    schema = requests.get(f"{servers['gen_url']}/openapi.json", timeout=30).json()
    assert "put" in schema["paths"]["/generate"] and "/health" in schema["paths"]
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"sentences", "tokens_to_generate", "end_strings", "random_seed", "all_probs"} <= set(fields)


def test_offline_prompts_mode_prints_the_response(servers, ckpts, policy):
    out, err = servers["offline"].communicate(timeout=300)
    assert servers["offline"].returncode == 0, err[-3000:]
    res = json.loads(out.split("*" * 27)[1])
    tok = ckpts["tokenizer"]
    for i, p in enumerate(["Q: How are you?", "In days of yore"]):
        assert res["token_ids"][i] == ref.greedy(policy, tok, tok.text_to_ids(p), 4)
        assert res["sentences"][i].startswith(p) and len(res["logprob"][i]) == len(res["token_ids"][i]) - 1


# ----------------------------------------------------------------------------------------------------------
# reward-model server
# ----------------------------------------------------------------------------------------------------------
def _reference_rewards(model, seqs):
    out = []
    with torch.no_grad():
        for ids in seqs:
            tok = torch.tensor([ids])
            r = model(tok, torch.arange(len(ids)).unsqueeze(0), None)[0]  # [A]
            out.append(((r - torch.tensor(RM_MEAN)) / torch.tensor(RM_STD)).tolist())
    return torch.tensor(out)


def test_rewards_equal_in_process_forward(servers, ckpts, reward_model):
    tok = ckpts["tokenizer"]
    texts = [TEMPLATE.format(question=QUESTION, values=VALUES) + "In days of yore", "Q: How are you?",
             "With graphics cards, it did astound"]
    r = requests.put(f"{servers['rm_url']}/infer", json={"sentences": texts}, timeout=120)
    assert r.status_code == 200, r.text
    res = r.json()
    seqs = tok.texts_to_ids(texts)
    expected = _reference_rewards(reward_model, seqs)
    assert len(res["rewards"]) == 3 and all(len(x) == 3 for x in res["rewards"])
    torch.testing.assert_close(torch.tensor(res["rewards"]), expected, atol=1e-4, rtol=0)
    assert res["exceeded"] == [False] * 3
    # tokens + sequence_lengths (right-padded rows) give the same values; add_EOS scores one more token
    rows = [s + [0] * (40 - len(s)) for s in seqs]
    r2 = requests.post(f"{servers['rm_url']}/infer", timeout=120,
                       json={"tokens": rows, "sequence_lengths": [len(s) for s in seqs]}).json()
    torch.testing.assert_close(torch.tensor(r2["rewards"]), expected, atol=1e-4, rtol=0)
    r3 = requests.put(f"{servers['rm_url']}/infer", json={"sentences": texts[1:2], "add_EOS": True},
                      timeout=120).json()
    torch.testing.assert_close(torch.tensor(r3["rewards"]),
                               _reference_rewards(reward_model, [seqs[1] + [tok.eos_id]]), atol=1e-4, rtol=0)


def test_reward_concurrent_requests_and_long_input(servers, ckpts, reward_model):
    tok = ckpts["tokenizer"]
    texts = ["In days of yore", "Q: How big is the universe?", "A company arose", "x"]
    out, errors = [None] * 12, []

    def worker(i):
        try:
            out[i] = requests.put(f"{servers['rm_url']}/infer", json={"sentences": [texts[i % 4]]},
                                  timeout=120).json()["rewards"][0]
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    expected = _reference_rewards(reward_model, tok.texts_to_ids(texts))
    torch.testing.assert_close(torch.tensor(out), expected.repeat(3, 1), atol=1e-4, rtol=0)
    long_ids = tok.text_to_ids("a " * 400)
    res = requests.put(f"{servers['rm_url']}/infer", json={"tokens": [long_ids]}, timeout=120).json()
    assert res["exceeded"] == [True]  # cut to the context, as NeMo-Aligner does, and flagged
    torch.testing.assert_close(torch.tensor(res["rewards"]),
                               _reference_rewards(reward_model, [long_ids[:CONTEXT]]), atol=1e-4, rtol=0)


RM_BAD = [
    ({}, "sentences"),
    ({"sentences": ["a"], "tokens": [[1, 2]]}, "sentences"),
    ({"sentences": []}, "sentences"),
    ({"sentences": ["a"] * 17}, "sentences"),
    ({"tokens": [[1, 2, 3]], "sequence_lengths": [4]}, "sequence_lengths[0]"),
    ({"tokens": [[1, 2], [3]], "sequence_lengths": [2]}, "sequence_lengths"),
    ({"tokens": [[1, 99999]]}, "tokens[0]"),
    ({"tokens": [["a"]]}, "tokens[0][0]"),
    ({"sentences": ["a"], "add_EOS": 1}, "add_EOS"),
    ({"sentences": ["ok", "a\ud800"]}, "sentences[1]"),
    ({"tokens": [[2**40]]}, "tokens[0][0]"),
    ({"tokens": [[1]], "sequence_lengths": [2**70]}, "sequence_lengths[0]"),
]


@pytest.mark.parametrize("body,field", RM_BAD, ids=[f for _, f in RM_BAD])
def test_reward_bad_request_names_the_field(servers, body, field):
    r = requests.put(f"{servers['rm_url']}/infer", json=body, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert requests.get(f"{servers['rm_url']}/health", timeout=30).json()["num_attributes"] == 3


# ----------------------------------------------------------------------------------------------------------
# config, shutdown
# ----------------------------------------------------------------------------------------------------------
def test_conf_yaml_files_match_schema_defaults():
    assert load_config(GPTEvalConfig, ROOT / "conf" / "megatron_gpt_inference.yaml") == GPTEvalConfig()
    assert load_config(RMServeConfig, ROOT / "conf" / "inference_rm.yaml", validate=False) == RMServeConfig()


@pytest.mark.parametrize("script,args,needle", [
    (GEN_SCRIPT, ["gpt_model_file=/x", "serverr=True"], "serverr"),
    (GEN_SCRIPT, ["server=True"], "gpt_model_file"),
    (GEN_SCRIPT, ["gpt_model_file=/x", "web_server=True"], "web_server"),
    (RM_SCRIPT, ["rm_model_file=/x", "inference.portt=1424"], "inference.portt"),
    (RM_SCRIPT, ["rm_model_file=/x", "inference.max_batch_size=0"], "inference.max_batch_size"),
])
def test_config_errors_are_one_line_exit_2(script, args, needle):
    proc = subprocess.run(python_cmd(script, *args), env=_clean_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error") and needle in lines[0], proc.stderr


def test_wrong_kind_of_checkpoint_is_a_config_error(ckpts):
    proc = subprocess.run(python_cmd(GEN_SCRIPT, f"gpt_model_file={ckpts['rm']}", "trainer.precision=32"),
                          env=_clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error: gpt_model_file=" in proc.stderr and "reward model checkpoint" in proc.stderr


def test_servers_listen_on_loopback_only(servers):
    """Issue 12, section 2: single node, one process each; the HTTP port and nothing else, on loopback."""
    from tests.helpers import is_loopback, listening_addresses

    for name, port in (("gen", servers["gen_port"]), ("rm", int(servers["rm_url"].rsplit(":", 1)[1]))):
        addresses = [a for pid in servers[name].pids for a in listening_addresses(pid)]
        assert f"127.0.0.1:{port}" in addresses, (name, addresses)
        assert all(is_loopback(a) for a in addresses), (name, addresses)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["gen", "rm"])
def test_fuzz_openapi_schema_never_5xx(servers, server):
    """schemathesis over each server's own OpenAPI schema (loopback only): schema-valid and schema-violating
    requests to every operation, a bounded number of each; no answer is a 5xx, and /health answers after."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

    base = servers[f"{server}_url"]
    assert base.startswith("http://127.0.0.1:")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    seen = []
    for mode, examples in ((GenerationMode.POSITIVE, 150), (GenerationMode.NEGATIVE, 150)):
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(generation_mode=mode))
        def check(case):
            r = case.call(base_url=base, timeout=120)
            seen.append(r.status_code)
            assert r.status_code < 500, (case.method, case.path, case.body, r.status_code, r.text[:500])

        check()
    assert len(seen) >= 150 and any(code == 200 for code in seen) and any(400 <= c < 500 for c in seen), seen
    assert requests.get(f"{base}/health", timeout=30).status_code == 200


def test_sigterm_exits_zero(servers):
    """Last in the module: both servers stop cleanly on SIGTERM."""
    assert servers["gen"].terminate() == 0, servers["gen"].output()[-3000:]
    assert servers["rm"].terminate() == 0, servers["rm"].output()[-3000:]
