"""``python -m megatron_align.demo.world --out DIR [--n N] [--n-val M] [--seed S]``: writes the data.

Writes ``DIR/train.jsonl``, ``val.jsonl`` (SteerLM SFT chats with rule labels) and ``train_reg.jsonl``,
``val_reg.jsonl`` (regression reward model rows); the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import sys

from megatron_align.demo.world.files import write_demo_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_align.demo.world",
                                     description="Write the SteerLM demo data set (rule-labelled chats).")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--n", type=int, default=2000, help="training chats (default 2000)")
    parser.add_argument("--n-val", type=int, default=200, help="validation chats (default 200)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    args = parser.parse_args(argv)
    if args.n < 0 or args.n_val < 0:
        parser.error("--n and --n-val must be >= 0")
    for name, path in write_demo_data(args.out, args.n, args.n_val, args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
