"""The servers on 2 gloo ranks (torchrun): rank 0 serves HTTP, the other rank follows its broadcasts.

- ``megatron_gpt_eval.py`` at TP=2: a greedy request with ``compute_logprob`` equals the in-process TP=1
  references (tests/naive_generation.py); SIGTERM to rank 0 stops both ranks, torchrun exits 0.
- ``serve_reward_model.py`` at PP=2 (two pipeline stages; rewards come from the last stage): rewards equal
  the in-process forward; SIGTERM to rank 1 (not the HTTP rank) stops both ranks, exit 0.
- ``megatron_gpt_eval.py`` offline prompts mode with 2 data-parallel replicas (TP=1): 3 prompts split 2 + 1
  over the replicas come back in order and equal the references.
The three jobs start together so that their start-ups overlap.
"""

import json
import subprocess
import sys

import pytest
import requests
import torch

from tests import naive_generation as ref
from tests.helpers import ROOT, _clean_env, _free_port
from tests.servers_common import GEN_SCRIPT, RM_SCRIPT, ServerProcess, free_port

pytestmark = pytest.mark.distributed
OFFLINE_PROMPTS = ["Q: How are you?", "In days of yore", "With graphics cards"]


def _torchrun(script, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port()), str(script), *args]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, megatron_single):
    from tests.servers_common import make_checkpoints

    return make_checkpoints(tmp_path_factory.mktemp("server_tp2"))


@pytest.fixture(scope="module")
def jobs(ckpts):
    gen_port, rm_port = free_port(), free_port()
    gen = ServerProcess(_torchrun(GEN_SCRIPT, f"gpt_model_file={ckpts['policy']}", "server=True",
                                  f"port={gen_port}", "tensor_model_parallel_size=2",
                                  "pipeline_model_parallel_size=1", "trainer.devices=2",
                                  "trainer.precision=32"))
    rm = ServerProcess(_torchrun(RM_SCRIPT, f"rm_model_file={ckpts['rm']}", f"inference.port={rm_port}",
                                 "++model.tensor_model_parallel_size=1",
                                 "++model.pipeline_model_parallel_size=2", "trainer.devices=2",
                                 "trainer.precision=32", "inference.micro_batch_size=2"))
    offline = subprocess.Popen(
        _torchrun(GEN_SCRIPT, f"gpt_model_file={ckpts['policy']}", "trainer.devices=2",
                  "trainer.precision=32", "tensor_model_parallel_size=1", "pipeline_model_parallel_size=1",
                  "inference.greedy=True", "inference.add_BOS=False", "inference.tokens_to_generate=4",
                  # the conf's default is NeMo's 1.2, which greedy decoding honours too; the reference
                  # is plain argmax (with 1.2, a repeated token is penalised for some random weights)
                  "inference.repetition_penalty=1.0",
                  f"prompts={OFFLINE_PROMPTS}"),
        env=_clean_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        gen.wait_ready(timeout=400)
        rm.wait_ready(timeout=400)
        yield {"gen": gen, "rm": rm, "gen_url": f"http://127.0.0.1:{gen_port}",
               "rm_url": f"http://127.0.0.1:{rm_port}", "offline": offline}
    finally:
        gen.kill()
        rm.kill()
        if offline.poll() is None:
            offline.kill()


def test_tp2_generation_server_answers_and_stops_on_sigterm(jobs, ckpts):
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.gpt import build_gpt_model

    tok = ckpts["tokenizer"]
    policy = build_gpt_model(ckpts["policy_cfg"], vocab_size=tok.vocab_size)
    load_checkpoint(ckpts["policy"], policy)
    prompts = ["Q: How are you?", "In days of yore, in tech's great hall"]
    body = {"sentences": prompts, "tokens_to_generate": 6, "greedy": True, "compute_logprob": True}
    r = requests.put(f"{jobs['gen_url']}/generate", timeout=300, json=body)
    assert r.status_code == 200, r.text
    res = r.json()
    for i, p in enumerate(prompts):
        ids = ref.greedy(policy, tok, tok.text_to_ids(p), 6)
        assert res["token_ids"][i] == ids
        assert res["sentences"][i].startswith(p)
        expected_lp = torch.tensor(ref.logprobs(policy, ids)[0])
        torch.testing.assert_close(torch.tensor(res["logprob"][i]), expected_lp, atol=1e-4, rtol=0)
    health = requests.get(f"{jobs['gen_url']}/health", timeout=30).json()
    assert health["tensor_model_parallel_size"] == 2 and len(jobs["gen"].pids) == 2
    assert jobs["gen"].terminate(rank=0, timeout=120) == 0, jobs["gen"].output()[-4000:]


def test_pp2_reward_server_matches_forward_and_stops_on_sigterm_to_rank1(jobs, ckpts):
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.reward import build_reward_model

    tok = ckpts["tokenizer"]
    model = build_reward_model(ckpts["rm_cfg"], vocab_size=tok.vocab_size)
    load_checkpoint(ckpts["rm"], model)
    model.eval()
    texts = ["Q: How are you?", "With graphics cards, it did astound", "x"]  # mbs 2: one padding row
    r = requests.put(f"{jobs['rm_url']}/infer", json={"sentences": texts}, timeout=300)
    assert r.status_code == 200, r.text
    with torch.no_grad():
        expected = [model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), None)[0].tolist()
                    for ids in tok.texts_to_ids(texts)]
    torch.testing.assert_close(torch.tensor(r.json()["rewards"]), torch.tensor(expected), atol=1e-4, rtol=0)
    assert jobs["rm"].terminate(rank=1, timeout=120) == 0, jobs["rm"].output()[-4000:]


def test_offline_mode_with_two_data_parallel_replicas(jobs, ckpts):
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.gpt import build_gpt_model

    out, err = jobs["offline"].communicate(timeout=400)
    assert jobs["offline"].returncode == 0, err[-4000:]
    res = json.loads(out.split("*" * 27)[1])
    tok = ckpts["tokenizer"]
    policy = build_gpt_model(ckpts["policy_cfg"], vocab_size=tok.vocab_size)
    load_checkpoint(ckpts["policy"], policy)
    expected = [ref.greedy(policy, tok, tok.text_to_ids(p), 4) for p in OFFLINE_PROMPTS]
    assert len(res["token_ids"]) == len(expected)
    for got, want, p in zip(res["token_ids"], expected, OFFLINE_PROMPTS):
        # equal, or a different argmax among near-equal logits (a tie broken differently by batching), after
        # which the continuation may differ in length too: it must still stop at eos or after 4 new tokens
        n_prompt = len(tok.text_to_ids(p))
        stopped = len(got) == n_prompt + 4 or (len(got) > n_prompt and got[-1] == tok.eos_id)
        valid = stopped and ref.is_greedy_continuation(policy, tok, n_prompt, got)
        assert got == want or valid, (got, want)
    assert [s[:len(p)] for s, p in zip(res["sentences"], OFFLINE_PROMPTS)] == OFFLINE_PROMPTS
