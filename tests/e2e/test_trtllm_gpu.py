"""TRTLLMBackend against a real TensorRT-LLM 1.2.1 engine (GPU image only; skipped elsewhere).

A tiny random GQA Llama GPTModel is exported to an HF directory from the live model (``export_hf_dir``), the
engine starts from it, and: greedy generation runs; ``refit`` with every weight zeroed makes TensorRT-LLM's
own ``check_weights_updated`` report all-zero parameters on every worker; refitting the original weights
gives back exactly the first greedy generation (so buckets + finalize restore the full model).
"""

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU and tensorrt_llm (TensorRT-LLM 1.2.1 image)", allow_module_level=True)
pytest.importorskip("tensorrt_llm", reason="needs tensorrt_llm (TensorRT-LLM 1.2.1 GPU image, docs/gpu.md)")


def test_generate_refit_zero_and_restore(megatron_single, tmp_path):
    from megatron_align.config.generation import TRTLLMConfig
    from megatron_align.generation.interface import SamplingParams
    from megatron_align.generation.trtllm.backend import TRTLLMBackend, export_hf_dir
    from megatron_align.generation.trtllm.gather import iter_gathered_groups
    from megatron_align.models.gpt import build_gpt_model
    from tests.e2e.test_hf_parity import _save_tokenizer
    from tests.helpers import tiny_llama

    cfg = tiny_llama(init_method_std=0.1, vocab_size=1000)
    model = build_gpt_model(cfg, precision="bf16").eval()
    hf_dir = export_hf_dir(iter_gathered_groups(model, cfg, dtype=torch.bfloat16), cfg, tmp_path / "hf")
    _save_tokenizer(hf_dir)
    trt = TRTLLMConfig(enable=True, max_input_len=32, max_output_len=16, refit_bucket_mb=1,
                       kv_cache_free_gpu_memory_fraction=0.2)
    backend = TRTLLMBackend(hf_dir, cfg, trt, dtype=torch.bfloat16)
    try:
        prompts = [[1, 5, 9, 12], [1, 40]]
        greedy = SamplingParams(greedy=True, tokens_to_generate=8, end_strings=[])
        first = backend.generate(prompts, greedy)
        assert first.tokens.shape[0] == 2 and (first.lengths > first.prompt_lengths).all()

        saved = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        backend.refit(model)
        assert all(backend.engine()._collective_rpc("check_weights_updated"))

        model.load_state_dict(saved, strict=False)
        backend.refit(model)
        again = backend.generate(prompts, greedy)
        assert torch.equal(again.tokens, first.tokens)
    finally:
        backend.close()
