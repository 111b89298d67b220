"""TRTLLMBackend without TensorRT-LLM: sampling-param mapping, outputs, IPC payloads, the refit call sequence.

The engine, ``tensorrt_llm.SamplingParams``, the CUDA IPC handle and the GPU UUID are replaced by fakes; the
fake engine unpacks each ``update_weights`` payload the way TensorRT-LLM 1.2's ``WorkerExtension`` does
(base64 -> pickle -> ``(fn, args)`` with ``args[6]`` replaced by its device -> ``fn(*args)``), so the test
checks what a worker would load: every HF tensor of the live megatron model exactly once, in bounded buckets,
then the finalize call. The GPU-only path (a real engine) is in tests/e2e/test_trtllm_gpu.py.
"""

from __future__ import annotations

import base64
import math
import pickle
from types import SimpleNamespace

import pytest
import torch

from megatron_align.config.generation import TRTLLMConfig
from megatron_align.generation.interface import SamplingParams
from megatron_align.generation.trtllm import convert, ipc, sampling
from megatron_align.generation.trtllm.backend import TRTLLMBackend, engine_kwargs, export_hf_dir
from megatron_align.generation.trtllm.gather import iter_gathered_groups
from tests.helpers import positions, tiny_llama, tokens

# Field names of tensorrt_llm.SamplingParams (tensorrt_llm/sampling_params.py, 1.2 line) that we may set.
TRTLLM_SAMPLING_FIELDS = {
    "end_id", "pad_id", "max_tokens", "stop", "stop_token_ids", "include_stop_str_in_output", "n",
    "top_k", "top_p", "seed", "temperature", "min_tokens", "repetition_penalty", "logprobs", "detokenize",
}


def trtllm_greedy(kw) -> bool:
    """TensorRT-LLM's ``SamplingParams.params_imply_greedy_decoding`` rule, restated."""
    t, p, k = kw.get("temperature"), kw.get("top_p"), kw.get("top_k")
    return (t is None and p is None and k is None) or k == 1 or p == 0.0 or t == 0


# ------------------------------------------------------------------------------------------------------------
# sampling params and outputs
# ------------------------------------------------------------------------------------------------------------
def test_sampling_params_map_to_trtllm_names():
    kw = sampling.trtllm_sampling_kwargs(
        SamplingParams(temperature=0.7, top_k=0, top_p=0.0, repetition_penalty=1.0, tokens_to_generate=9,
                       end_strings=["<extra_id_1>"], random_seed=5, compute_logprob=True), end_id=2, pad_id=0)
    assert set(kw) <= TRTLLM_SAMPLING_FIELDS
    assert kw["temperature"] == 0.7 and kw["top_k"] is None and kw["top_p"] is None  # NeMo "off" -> None
    assert not trtllm_greedy(kw)  # top_p=0.0 would have meant greedy to TensorRT-LLM
    assert kw["max_tokens"] == 9 and kw["seed"] == 5 and kw["end_id"] == 2 and kw["pad_id"] == 0
    assert kw["stop"] == ["<extra_id_1>"] and kw["include_stop_str_in_output"] is True
    assert kw["repetition_penalty"] is None and kw["min_tokens"] is None and kw["logprobs"] == 1

    kw = sampling.trtllm_sampling_kwargs(
        SamplingParams(top_k=40, top_p=0.9, repetition_penalty=1.3, min_tokens_to_generate=2,
                       compute_logprob=False, end_strings=[]), end_id=2)
    assert (kw["top_k"], kw["top_p"], kw["repetition_penalty"], kw["min_tokens"]) == (40, 0.9, 1.3, 2)
    assert kw["logprobs"] is None and kw["stop"] is None and kw["pad_id"] == 2
    assert sampling.trtllm_sampling_kwargs(SamplingParams(top_p=1.0), 2)["top_p"] is None

    kw = sampling.trtllm_sampling_kwargs(SamplingParams(greedy=True, temperature=0.3, top_p=0.5), end_id=2)
    assert trtllm_greedy(kw) and kw["top_k"] == 1 and kw["temperature"] is None
    with pytest.raises(ValueError, match="temperature"):
        sampling.trtllm_sampling_kwargs(SamplingParams(temperature=0.0), end_id=2)


def test_outputs_become_generation_output():
    lp = SimpleNamespace
    done = [
        sampling.Completion([7, 8, 2], [{7: lp(logprob=-0.5), 9: lp(logprob=-1.0)}, {8: lp(logprob=-0.25)},
                                        {2: lp(logprob=-0.125)}], "stop"),
        sampling.Completion([5, 6], [-1.5, {1: lp(logprob=-3.0)}], "length"),  # float / missing entry
    ]
    out = sampling.to_generation_output([[1, 3, 4], [1]], done, pad_id=0, compute_logprob=True)
    assert out.tokens.tolist() == [[1, 3, 4, 7, 8, 2], [1, 5, 6, 0, 0, 0]]
    assert out.prompt_lengths.tolist() == [3, 1] and out.lengths.tolist() == [6, 3]
    assert out.is_end.tolist() == [True, False]
    assert out.logprobs[0].tolist() == [0, 0, -0.5, -0.25, -0.125]  # logprobs[t] scores tokens[t + 1]
    assert out.logprobs[1, 0].item() == -1.5 and math.isnan(out.logprobs[1, 1].item())
    assert out.logprobs[1, 2:].eq(0).all() and out.response_ids(0) == [7, 8, 2]
    assert sampling.to_generation_output([[1]], [sampling.Completion([4])], 0, False).logprobs is None
    with pytest.raises(ValueError, match="empty prompt"):
        sampling.to_generation_output([[]], [sampling.Completion([4])], 0, True)


# ------------------------------------------------------------------------------------------------------------
# IPC payloads
# ------------------------------------------------------------------------------------------------------------
def fake_rebuild(tensor, _cls, _size, _stride, _offset, _storage_cls, device, *_rest):
    """Stands for ``rebuild_cuda_tensor``: returns the tensor and the device the worker asked for."""
    return tensor.clone(), device


def fake_handle(t):
    return fake_rebuild, (t, torch.Tensor, t.shape, t.stride(), 0, None, "cuda:7", "handle")


def worker_unpack(payload, uuid, device_id):
    """What ``WorkerExtension.update_weights`` does with its entry (tensorrt_llm/llmapi/rlhf_utils.py)."""
    data = payload[uuid]
    handles = pickle.loads(base64.b64decode(data)) if isinstance(data, str) else data
    assert isinstance(handles, list)
    out = {}
    for name, (fn, args) in handles:
        args = list(args)
        args[ipc.DEVICE_ARG] = device_id
        out[name] = fn(*args)
    return out


def test_bucket_payload_round_trips_through_the_worker_format():
    bucket = [("a.weight", torch.arange(6.0).view(2, 3)), ("b.bias", torch.ones(4))]
    payload = ipc.bucket_payload(bucket, "GPU-1234", fake_handle)
    assert list(payload) == ["GPU-1234"] and isinstance(payload["GPU-1234"], str)
    got = worker_unpack(payload, "GPU-1234", 3)
    assert [n for n in got] == ["a.weight", "b.bias"]
    assert all(dev == 3 for _, dev in got.values())  # the worker's own device replaced index 6
    assert torch.equal(got["a.weight"][0], bucket[0][1]) and torch.equal(got["b.bias"][0], bucket[1][1])
    raw = ipc.bucket_payload(bucket, "GPU-1", fake_handle, serialize=False)
    assert worker_unpack(raw, "GPU-1", 0).keys() == got.keys()
    merged = ipc.merge_payloads([payload, None, {"GPU-9": "x"}])
    assert set(merged) == {"GPU-1234", "GPU-9"}
    with pytest.raises(ValueError, match="GPU-1234"):
        ipc.merge_payloads([payload, payload])
    with pytest.raises(ValueError, match="CUDA tensor"):
        ipc.reduce_cuda_tensor(torch.ones(2))
    with pytest.raises(ValueError, match="index 6"):
        ipc.bucket_payload(bucket, "GPU-1", lambda t: (fake_rebuild, (t,)))


# ------------------------------------------------------------------------------------------------------------
# the backend with a fake engine
# ------------------------------------------------------------------------------------------------------------
class FakeLLM:
    """Records ``_collective_rpc`` calls; unpacks payloads like TensorRT-LLM workers on GPUs ``uuids``."""

    def __init__(self, uuids=("GPU-fake",)):
        self.uuids, self.calls, self.generated = list(uuids), [], []
        self.uuid = self.uuids[0]
        self.loaded_by = {u: {} for u in self.uuids}
        self.loaded = self.loaded_by[self.uuid]

    def _collective_rpc(self, method, args=(), kwargs=None, non_block=False, unique_reply_rank=None):
        (payload,) = args
        if payload is None:
            self.calls.append((method, None))
            return [None] * len(self.uuids)
        assert sorted(payload) == sorted(self.uuids)  # one entry per worker GPU
        names = None
        for u in self.uuids:
            got = worker_unpack(payload, u, 0)
            assert names is None or sorted(got) == names  # every worker gets the same bucket
            names = sorted(got)
            for name, (t, _) in got.items():
                assert name not in self.loaded_by[u], f"{name} sent twice"
                self.loaded_by[u][name] = t
        self.calls.append((method, names))
        return [None] * len(self.uuids)

    def generate(self, ids, sp, use_tqdm=True):
        self.generated.append((ids, sp))
        outs = []
        for p in ids:
            toks = [(p[-1] + j + 1) % 50 for j in range(sp["max_tokens"])]
            lps = [{t: SimpleNamespace(logprob=-0.1 * (j + 1))} for j, t in enumerate(toks)]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=toks, logprobs=lps,
                                                                 finish_reason="length")]))
        return outs


def _backend(cfg, llm, tmp_path, **kw):
    return TRTLLMBackend(tmp_path, cfg, TRTLLMConfig(enable=True), llm=llm, sampling_cls=dict,
                         make_handle=fake_handle, device_uuid=llm.uuid, dtype=torch.float32, **kw)


def test_refit_sends_every_tensor_once_in_buckets_then_finalizes(megatron_single, tmp_path):
    from megatron_align.models.gpt import build_gpt_model

    cfg = tiny_llama(num_layers=3)
    model = build_gpt_model(cfg)
    llm = FakeLLM()
    backend = _backend(cfg, llm, tmp_path)
    backend.bucket_bytes = 70_000  # several buckets for this tiny model
    backend.refit(model)
    want = convert.megatron_shards_to_hf({(0, 0): model.state_dict()}, cfg, 1, 1)
    assert sorted(llm.loaded) == sorted(want)
    assert all(torch.equal(llm.loaded[k], want[k]) for k in want)
    assert [m for m, _ in llm.calls] == ["update_weights"] * len(llm.calls)
    assert llm.calls[-1][1] is None and all(names for _, names in llm.calls[:-1])  # finalize last, once
    assert len(llm.calls) > 3 and backend.refits == 1
    for _, names in llm.calls[:-1]:
        if len(names) > 1:
            assert sum(convert.nbytes(want[n]) for n in names) <= backend.bucket_bytes
    with torch.no_grad():  # a second refit sends the new weights
        model.decoder.final_layernorm.weight.fill_(2.0)
    llm.loaded.clear()
    backend.refit(model)
    assert torch.equal(llm.loaded["model.norm.weight"], torch.full((cfg.hidden_size,), 2.0))


def test_generate_maps_params_and_outputs(tmp_path):
    llm = FakeLLM()
    backend = _backend(tiny_llama(), llm, tmp_path)
    out = backend.generate([[1, 4], [3]], SamplingParams(temperature=0.5, tokens_to_generate=3, top_k=0,
                                                              compute_logprob=True))
    (ids, sp), = llm.generated
    assert ids == [[1, 4], [3]] and sp["temperature"] == 0.5 and sp["top_k"] is None and sp["max_tokens"] == 3
    assert out.tokens.tolist() == [[1, 4, 5, 6, 7], [3, 4, 5, 6, 0]] and out.lengths.tolist() == [5, 4]
    assert torch.allclose(out.logprobs[0, 1:], torch.tensor([-0.1, -0.2, -0.3]))
    assert not out.is_end.any() and out.texts is None
    empty = backend.generate([[1, 4]], SamplingParams(tokens_to_generate=0, min_tokens_to_generate=0))
    assert empty.tokens.tolist() == [[1, 4]] and len(llm.generated) == 1
    with pytest.raises(ValueError, match="tokenizer"):
        backend.generate(["hello"], SamplingParams())


def test_engine_kwargs_use_trtllm_names():
    kw = engine_kwargs("/m", TRTLLMConfig(max_input_len=100, max_output_len=28), tp=2, pp=2, dtype="bfloat16")
    assert kw["orchestrator_type"] == "ray" and kw["backend"] == "pytorch"
    assert kw["ray_worker_extension_cls"] == "tensorrt_llm.llmapi.rlhf_utils.WorkerExtension"
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (2, 2)
    assert kw["max_input_len"] == 100 and kw["max_seq_len"] == 128 and "enable_sleep" not in kw
    cfg = TRTLLMConfig(reshard=True, unload_engine_train=True)
    kw = engine_kwargs("/m", cfg, tp=2, pp=2, dtype="float16")
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (4, 1) and kw["enable_sleep"] is True


def test_exported_engine_dir_loads_in_transformers_with_megatron_logits(megatron_single, tmp_path):
    transformers = pytest.importorskip("transformers")
    from megatron_align.models.gpt import build_gpt_model

    cfg = tiny_llama(init_method_std=0.1)
    model = build_gpt_model(cfg, parallel_output=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    out = export_hf_dir(iter_gathered_groups(model, cfg), cfg, tmp_path / "hf", dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tok = tokens(2, 10, cfg.vocab_size)
    with torch.no_grad():
        ours = model(tok, positions(tok), None)[..., : cfg.vocab_size]
        ref = hf(input_ids=tok).logits
    assert (ours - ref).abs().max().item() <= 1e-4
