"""Multi-rank generation worker: loads a checkpoint at the requested TP x PP layout and generates.

Run by tests/distributed/test_generation_tp2.py under torchrun. Usage:
    generation_worker.py --tp 2 --pp 1 --spec spec.json
spec.json: {"ckpt": dir, "prompts": [[ids]], "vocab_size": int,
            "cases": [{"name", "engine", "padding", "use_kv_cache", "params": {SamplingParams fields}}]}
Every rank writes <spec>.tp<T>pp<P>.rank<r>.json: per case name, the output's tokens, lengths,
prompt_lengths, is_end and logprobs (lists).
"""

import argparse
import json


def run(spec, tp, pp):
    from megatron_align.generation import SamplingParams
    from megatron_align.generation.megatron_backend import MegatronGenerationBackend
    from megatron_align.models.checkpoint import load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model

    cfg = read_model_config(spec["ckpt"])
    cfg.tensor_model_parallel_size = tp
    cfg.pipeline_model_parallel_size = pp
    model = build_gpt_model(cfg)
    load_checkpoint(spec["ckpt"], model)
    model.eval()
    results = {}
    for case in spec["cases"]:
        backend = MegatronGenerationBackend(
            model, max_batch_size=4, max_sequence_length=64, vocab_size=spec["vocab_size"], eos_id=None,
            engine=case["engine"], padding=case["padding"], use_kv_cache=case["use_kv_cache"])
        out = backend.generate(spec["prompts"], SamplingParams(**case["params"]))
        results[case["name"]] = {
            "engine": "lean" if backend.lean is not None else "megatron",
            "tokens": out.tokens.tolist(), "lengths": out.lengths.tolist(),
            "prompt_lengths": out.prompt_lengths.tolist(), "is_end": out.is_end.tolist(),
            "logprobs": None if out.logprobs is None else out.logprobs.tolist(),
        }
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args()

    from megatron_align.distributed import shutdown, start

    env = start(args.tp, args.pp, seed=1234)
    spec = json.load(open(args.spec))
    results = run(spec, args.tp, args.pp)
    with open(f"{args.spec}.tp{args.tp}pp{args.pp}.rank{env.rank}.json", "w") as f:
        json.dump(results, f)
    shutdown()


if __name__ == "__main__":
    main()
