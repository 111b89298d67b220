"""The ``megatron-align convert`` subcommand: Hugging Face or NeMo <-> megatron_align checkpoint.

    megatron-align convert --from-hf HF_DIR --out CKPT_DIR [--precision 32|bf16] [--tp N] [--pp N]
    megatron-align convert --to-hf CKPT_DIR --out HF_DIR [--dtype float32|bfloat16|float16] [--model-type T]
    megatron-align convert --from-nemo MODEL.nemo|DIR --out CKPT_DIR [--precision 32|bf16] [--tp N] [--pp N]
    megatron-align convert --to-nemo CKPT_DIR --out X.nemo|DIR [--dtype bfloat16|float32|float16]
                           [--nemo-backend torch_dist|zarr]

A user mistake (missing config.json, unsupported model_type or feature, unreadable checkpoint, unsafe tarball)
prints one line ``convert error: ...`` on stderr and exits with status 2, as argparse does for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from megatron_align.models.hf.config_map import SUPPORTED_MODEL_TYPES
from megatron_align.models.hf.errors import HFConversionError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``megatron-align convert``."""
    p = argparse.ArgumentParser(
        prog="megatron-align convert",
        description="Convert a Hugging Face model directory or a NeMo 1.x .nemo to a megatron_align "
                    "checkpoint, or back.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="HF_DIR", help="HF model directory (config.json + *.safetensors)")
    src.add_argument("--to-hf", metavar="CKPT_DIR", help="megatron_align checkpoint directory")
    src.add_argument("--from-nemo", metavar="NEMO", help="NeMo 1.x .nemo tarball or its extracted directory")
    src.add_argument("--to-nemo", metavar="CKPT_DIR", help="megatron_align checkpoint directory -> .nemo")
    p.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    p.add_argument("--precision", default="32", choices=["32", "bf16"],
                   help="import: dtype the checkpoint stores (default 32)")
    p.add_argument("--tp", type=int, default=1,
                   help="import: default tensor-parallel size recorded (default 1)")
    p.add_argument("--pp", type=int, default=1,
                   help="import: default pipeline-parallel size recorded (default 1)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="export: dtype of the weights (default: float32 for HF, bfloat16 for NeMo)")
    p.add_argument("--nemo-backend", default="torch_dist", choices=["torch_dist", "zarr"],
                   help="--to-nemo: weights format (torch_dist: NeMo 2.x's nlp collection and megatron-core "
                        ">= 0.7; zarr: NeMo <= 1.23)")
    p.add_argument("--model-type", choices=SUPPORTED_MODEL_TYPES,
                   help="export: HF model type to write (default: implied by the architecture)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [HFConversionError]
    try:
        from megatron_align.models.checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:  # pragma: no cover - the checkpoint module is part of the package
        pass
    try:
        from megatron_align.config.errors import ConfigError

        errors.append(ConfigError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def convert_main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``megatron-align convert``; returns 0, or exits with status 2 after one line for a user error."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from megatron_align.models.hf import convert
    from megatron_align.models.nemo import convert as nemo

    try:
        if args.from_hf is not None:
            convert.import_hf(args.from_hf, args.out, tp=args.tp, pp=args.pp, precision=args.precision,
                              overwrite=args.overwrite)
        elif args.to_hf is not None:
            convert.export_hf(args.to_hf, args.out, dtype=args.dtype or "float32", model_type=args.model_type,
                              overwrite=args.overwrite)
        elif args.from_nemo is not None:
            nemo.import_nemo(args.from_nemo, args.out, tp=args.tp, pp=args.pp, precision=args.precision,
                             overwrite=args.overwrite)
        else:
            nemo.export_nemo(args.to_nemo, args.out, dtype=args.dtype or "bfloat16",
                             backend=args.nemo_backend, overwrite=args.overwrite)
    except _user_errors() as err:
        print(f"convert error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(convert_main())
