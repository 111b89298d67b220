"""HelpSteer2 (nvidia/HelpSteer2) -> SteerLM attribute-conditioned SFT records (train.jsonl, val.jsonl).

    python examples/nlp/data/steerlm/preprocess_helpsteer2_data.py --output_directory=data/helpsteer2 \\
        --input_dir=<folder with train.jsonl.gz and validation.jsonl.gz>
    ... --output_directory=data/helpsteer2-only_helpfulness --only_helpfulness --input_dir=...
    ... --output_directory=data/helpsteer2-pref -pref --input_dir=<folder with preference/preference.jsonl.gz>

``--only_helpfulness``: label helpfulness alone. ``-pref``: HelpSteer2-Preference pairs (two records per
row, ``quality:<preference strength>``) for the scaled Bradley-Terry stage. Files may also be given as
``--train_file`` / ``--validation_file`` / ``--preference_file`` (JSONL, .jsonl.gz or parquet). Nothing is
downloaded. Conversion: ``megatron_align/data/steerlm/helpsteer.py``. Bad input: one line, exit 2.
"""

import argparse
import sys

from megatron_align.config.errors import run_cli
from megatron_align.data.steerlm.helpsteer import preprocess_helpsteer2, preprocess_helpsteer2_preference
from megatron_align.data.steerlm.inputs import preference_inputs, split_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-dir", "--output_directory", required=True,
                        help="folder for train.jsonl and val.jsonl (created if missing)")
    parser.add_argument("-oh", "--only_helpfulness", action="store_true",
                        help="use only the helpfulness attribute")
    parser.add_argument("-pref", "--preference", action="store_true",
                        help="use HelpSteer2-Preference (Bradley-Terry pairs), not the HelpSteer2 ratings")
    parser.add_argument("--input_dir", default=None, help="local copy of the nvidia/HelpSteer2 dataset files")
    parser.add_argument("--train_file", nargs="+", default=None, help="the train split file(s)")
    parser.add_argument("--validation_file", nargs="+", default=None, help="the validation split file(s)")
    parser.add_argument("--preference_file", nargs="+", default=None, help="preference.jsonl.gz (with -pref)")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.preference:
            files = preference_inputs(args.input_dir, args.preference_file)
            counts = preprocess_helpsteer2_preference(files, args.output_directory, args.only_helpfulness)
        else:
            train, val = split_inputs("nvidia/HelpSteer2", args.input_dir, args.train_file,
                                      args.validation_file)
            counts = preprocess_helpsteer2(train, val, args.output_directory, args.only_helpfulness)
        print(f"helpsteer2: {counts['train']} train / {counts['val']} val records in {args.output_directory}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
