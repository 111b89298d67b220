"""``megatron-align steer``: print a model's answer to one prompt, steered by attribute values.

    megatron-align steer --prompt "Write a poem on NVIDIA" --values quality:4,humor:4 --url http://127.0.0.1:1427
    megatron-align steer --prompt "..." --values creativity:0 --checkpoint results/acsft/checkpoints/... \\
        --tokens-to-generate 256 --temperature 0.7 --top-p 0.9 --seed 1

``--url``: a running ``examples/nlp/language_modeling/megatron_gpt_eval.py server=True`` (the seed's
``PUT /generate``); ``--checkpoint``: the attribute-conditioned SFT checkpoint, generated in this process.
Attributes not in ``--values`` take the seed's values (``steer.DEFAULT_VALUES``). Decoding is greedy unless
``--temperature`` is given. Only the answer goes to stdout; a mistake (unknown attribute, value out of 0..4,
unreachable server, missing checkpoint) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from megatron_align.config.sampling import SamplingParams
from megatron_align.generation.steering import END_STRING, SteerError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line through run_cli, not argparse's usage block
        raise SteerError(f"{message} (see megatron-align steer --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="megatron-align steer", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--values", default="", help="attribute values, e.g. quality:4,humor:0 (others: the "
                                                "seed's defaults quality:4,toxicity:0,humor:0,creativity:0,"
                                                "helpfulness:4,correctness:4,coherence:4,complexity:4,"
                                                "verbosity:4)")
    p.add_argument("--system", default=None, help="system prompt (default: the seed's)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="generation server, e.g. http://127.0.0.1:1427")
    where.add_argument("--checkpoint", help="attribute-conditioned SFT checkpoint directory (in process)")
    p.add_argument("--tokens-to-generate", type=int, default=None,
                   help="most tokens to generate (default: --checkpoint: as many as the model's context "
                        "leaves after the prompt, a larger value is cut to that with a note; --url: "
                        f"{SamplingParams().tokens_to_generate}, the shared default)")
    p.add_argument("--min-tokens-to-generate", type=int, default=0)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    mode.add_argument("--temperature", type=float, help="sample at this temperature instead of greedy")
    p.add_argument("--top-k", type=int, default=None, help="with --temperature: top-k (0: off)")
    p.add_argument("--top-p", type=float, default=None, help="with --temperature: nucleus mass (0: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--add-bos", action="store_true", help="put the bos token before the prompt")
    p.add_argument("--end-string", action="append", default=None,
                   help=f"stop string (repeatable; default {END_STRING})")
    p.add_argument("--raw", action="store_true", help="print the continuation as generated (stop string "
                                                      "included), as the seed's get_answer returns it")
    p.add_argument("--precision", default=None, help="--checkpoint: 32 or bf16 (default bf16 on GPU, 32 on "
                                                     "CPU)")
    p.add_argument("--timeout", type=float, default=600.0, help="--url: seconds to wait for the answer")
    return p


def _fit_to_context(params, asked, backend, prompt: str, add_bos: bool):
    """``params`` with ``tokens_to_generate`` at most what the model's context leaves after ``prompt``
    (all of it when ``asked`` is None); a cut is said in one note on stderr."""
    import dataclasses

    prompt_len = len(backend.tokenizer.text_to_ids(prompt)) + int(add_bos)
    room = backend.max_sequence_length - prompt_len
    if room < 1:
        raise SteerError(f"prompt: {prompt_len} tokens with the label line and chat markers; the model's "
                         f"context is {backend.max_sequence_length} tokens")
    if asked is not None and asked <= room:
        return params
    if asked is not None:
        print(f"note: --tokens-to-generate {asked} does not fit the model's context of "
              f"{backend.max_sequence_length} tokens after a {prompt_len}-token prompt; generating at most "
              f"{room}", file=sys.stderr, flush=True)
    return dataclasses.replace(params, tokens_to_generate=room)


def main(argv: list[str]) -> int:
    from megatron_align.config.errors import run_cli

    def inner() -> int:
        args = build_parser().parse_args(argv)
        from megatron_align.generation.steering import parse_values, steer, steer_prompt, steer_sampling

        values = parse_values(args.values)  # before any heavy import: a typo fails at once
        steer_prompt(args.prompt, values, args.system)
        greedy = args.temperature is None
        if greedy and (args.top_k is not None or args.top_p is not None):
            raise SteerError("--top-k / --top-p go with --temperature (sampling); greedy decoding ignores "
                             "them")
        sampling = {"temperature": 1.0 if greedy else args.temperature,
                    "repetition_penalty": args.repetition_penalty,
                    "min_tokens_to_generate": args.min_tokens_to_generate, "add_BOS": args.add_bos,
                    "random_seed": args.seed, "end_strings": args.end_string or [END_STRING]}
        if not greedy:
            sampling.update(top_k=args.top_k or 0, top_p=args.top_p or 0.0)
        params = steer_sampling(args.tokens_to_generate, greedy=greedy, **sampling)
        if args.url is not None:
            answer = steer(args.prompt, values, url=args.url, sampling=params, system=args.system,
                           raw=args.raw, timeout=args.timeout)
        else:
            import warnings

            from megatron_align.generation.build import load_backend

            warnings.filterwarnings("ignore")
            backend = load_backend(args.checkpoint, args.precision)
            params = _fit_to_context(params, args.tokens_to_generate, backend,
                                     steer_prompt(args.prompt, values, args.system), args.add_bos)
            answer = steer(args.prompt, values, backend=backend, sampling=params, system=args.system,
                           raw=args.raw)
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
        return 0

    return run_cli(inner)
