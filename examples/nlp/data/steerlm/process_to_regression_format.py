"""SteerLM SFT records -> regression reward model rows ``{"text": ..., "label": [9 floats]}``.

    python examples/nlp/data/steerlm/process_to_regression_format.py \\
        --input-file=data/merge_train.jsonl --output-file=data/merge_train_reg.jsonl

One row per rated turn; the text is the extra_id chat template with NeMo-Aligner's system prompt
(``--use-record-system``: each record's own). Format and rules: ``megatron_align/data/steerlm/regression.py``.
Bad input (malformed record, unknown attribute, out-of-range value): one line ``file:line: field: problem``,
exit 2.
"""

import argparse
import sys

from megatron_align.config.errors import run_cli
from megatron_align.data.steerlm.records import SYSTEM_PROMPT
from megatron_align.data.steerlm.regression import convert_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-file", required=True, help="SFT records (JSONL)")
    parser.add_argument("--output-file", required=True, help="regression rows (JSONL), overwritten")
    parser.add_argument("--use-record-system", action="store_true",
                        help="write each record's system prompt instead of NeMo-Aligner's fixed one")
    args = parser.parse_args(argv)

    def run() -> int:
        system = None if args.use_record_system else SYSTEM_PROMPT
        rows = convert_file(args.input_file, args.output_file, system)
        print(f"regression: {rows} rows -> {args.output_file}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
