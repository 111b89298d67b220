"""HelpSteer (nvidia/HelpSteer) -> SteerLM attribute-conditioned SFT records (``train.jsonl``, ``val.jsonl``).

    python examples/nlp/data/steerlm/preprocess_helpsteer_data.py --output_directory=data/helpsteer \\
        --input_dir=<folder with train.jsonl.gz and validation.jsonl.gz>

or ``--train_file`` and ``--validation_file`` (JSONL, .jsonl.gz or parquet; each may be given several files).
Nothing is downloaded. Conversion: ``megatron_align/data/steerlm/helpsteer.py``. Bad input: one line
``file:line: field: problem``, exit 2.
"""

import argparse
import sys

from megatron_align.config.errors import run_cli
from megatron_align.data.steerlm.helpsteer import preprocess_helpsteer
from megatron_align.data.steerlm.inputs import split_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-dir", "--output_directory", required=True,
                        help="folder for train.jsonl and val.jsonl (created if missing)")
    parser.add_argument("--input_dir", default=None, help="local copy of the nvidia/HelpSteer dataset files")
    parser.add_argument("--train_file", nargs="+", default=None, help="the train split file(s)")
    parser.add_argument("--validation_file", nargs="+", default=None, help="the validation split file(s)")
    args = parser.parse_args(argv)

    def run() -> int:
        train, val = split_inputs("nvidia/HelpSteer", args.input_dir, args.train_file, args.validation_file)
        counts = preprocess_helpsteer(train, val, args.output_directory)
        print(f"helpsteer: {counts['train']} train / {counts['val']} val records in {args.output_directory}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
