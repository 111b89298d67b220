"""Greedy generation throughput: megatron_align's megatron backend vs Hugging Face ``generate``, side by side.

Methods, all in one process on the same weights (a seeded random ``transformers.LlamaForCausalLM``; our side
imports it with ``import_hf``), timed in interleaved rounds so that machine load hits them alike:
- ``hf``: ``model.generate(do_sample=False, use_cache=True)`` on left-padded prompts with an attention mask;
- ``hf_inference_mode``: the same under ``torch.inference_mode()``;
- ``ours``: ``MegatronGenerationBackend`` with its default engine (the lean decode path with a preallocated KV
  cache); ``ours_logprobs``: also returning per-token log-probs;
- ``ours_megatron_cache``: ``engine="megatron"``: megatron's own forward with its ``StaticInferenceContext``;
- ``ours_nocache``: the backend recomputing the whole sequence every step (``use_kv_cache=False``).

Model: Llama architecture, 4 layers, hidden 256, 4 heads of 64 channels with 2 KV groups (GQA), intermediate
688 (Llama's ``multiple_of(8/3 * hidden, 16)``), untied embeddings, vocabulary 8000: about 7M parameters,
fp32.
Workloads: a batch of 8 prompts of 16-48 tokens and a batch of 1 prompt of 32 tokens; 64 new tokens each,
no eos stop (every row generates exactly 64 tokens); tokens/s = generated tokens / wall time of the whole
``generate`` call (prefill included). The greedy tokens of every method are checked to agree with HF's.

    python benchmarks/generation.py                 # both workloads, 5 rounds
    python benchmarks/generation.py --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

VOCAB, NEW_TOKENS = 8000, 64


def _hf_model(out_dir: Path):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, initializer_range=0.05,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(out_dir))
    return model


def _our_model(hf_dir: Path, ckpt_dir: Path):
    from megatron_align.models.checkpoint import load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.hf import import_hf

    import_hf(hf_dir, ckpt_dir)
    model = build_gpt_model(read_model_config(ckpt_dir))
    load_checkpoint(ckpt_dir, model)
    return model.eval()


def _prompts(batch: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    if batch == 1:
        lengths = [32]
    else:
        lengths = torch.randint(16, 49, (batch,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _hf_runner(model, prompts):
    import torch

    b, longest = len(prompts), max(map(len, prompts))
    ids = torch.zeros(b, longest, dtype=torch.long)
    mask = torch.zeros(b, longest, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                 do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
        return [out[i, longest:].tolist() for i in range(b)]

    return run


def _our_runner(model, prompts, use_kv_cache: bool, logprobs: bool = False, engine: str = "auto"):
    from megatron_align.generation import SamplingParams
    from megatron_align.generation.megatron_backend import MegatronGenerationBackend

    backend = MegatronGenerationBackend(model, max_batch_size=len(prompts), max_sequence_length=256,
                                        vocab_size=VOCAB, eos_id=None, pad_id=0, use_kv_cache=use_kv_cache,
                                        engine=engine)
    params = SamplingParams(greedy=True, tokens_to_generate=NEW_TOKENS, end_strings=[],
                            compute_logprob=logprobs)

    def run():
        out = backend.generate(prompts, params)
        return [out.response_ids(i) for i in range(len(prompts))]

    return run


METHODS = ("hf", "hf_inference_mode", "ours", "ours_logprobs", "ours_megatron_cache", "ours_nocache")


def _runners(hf, ours, prompts, methods):
    import torch

    def inference_mode(run):
        def wrapped():
            with torch.inference_mode():
                return run()
        return wrapped

    make = {
        "hf": lambda: _hf_runner(hf, prompts),
        "hf_inference_mode": lambda: inference_mode(_hf_runner(hf, prompts)),
        "ours": lambda: _our_runner(ours, prompts, True),
        "ours_logprobs": lambda: _our_runner(ours, prompts, True, logprobs=True),
        "ours_megatron_cache": lambda: _our_runner(ours, prompts, True, engine="megatron"),
        "ours_nocache": lambda: _our_runner(ours, prompts, False),
    }
    return {name: make[name]() for name in methods}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds per method")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)

    import torch

    from megatron_align.distributed import start

    if args.threads:
        torch.set_num_threads(args.threads)
    start(1, 1, seed=1234)
    with tempfile.TemporaryDirectory() as tmp:
        hf = _hf_model(Path(tmp) / "hf")
        ours = _our_model(Path(tmp) / "hf", Path(tmp) / "ckpt")
    load = os.getloadavg()
    rows = []
    for batch in args.batches:
        prompts = _prompts(batch)
        runners = _runners(hf, ours, prompts, ["hf"] + [m for m in args.methods if m != "hf"])
        outputs = {name: run() for name, run in runners.items()}  # warm-up, and the agreement check
        wall = {name: [] for name in runners}
        cpu = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                w0, c0 = time.perf_counter(), time.process_time()
                run()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        for name in runners:
            rows.append(dict(batch=batch, name=name, wall=statistics.median(wall[name]), best=min(wall[name]),
                             cpu=statistics.median(cpu[name]), same=outputs[name] == outputs["hf"]))
    print(f"torch threads {torch.get_num_threads()}, load average {load[0]:.2f} (start) "
          f"{os.getloadavg()[0]:.2f} (end), {args.rounds} interleaved rounds, {NEW_TOKENS} new tokens, "
          "greedy")
    print("| batch | method | tokens/s (median wall) | tokens/s (best wall) | tokens/s (median CPU time) "
          "| vs hf (wall) | vs hf (CPU) | tokens == hf |")
    print("|---|---|---|---|---|---|---|---|")
    ref = {r["batch"]: r for r in rows if r["name"] == "hf"}
    for r in rows:
        n = r["batch"] * NEW_TOKENS
        h = ref[r["batch"]]
        print(f"| {r['batch']} | {r['name']} | {n / r['wall']:.0f} | {n / r['best']:.0f} | "
              f"{n / r['cpu']:.0f} | {h['wall'] / r['wall']:.2f}x | {h['cpu'] / r['cpu']:.2f}x | "
              f"{r['same']} |")


if __name__ == "__main__":
    main()
