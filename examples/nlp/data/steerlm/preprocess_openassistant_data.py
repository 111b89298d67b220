"""OpenAssistant (oasst1) trees -> SteerLM attribute-conditioned SFT records (``train.jsonl``, ``val.jsonl``).

    python examples/nlp/data/steerlm/preprocess_openassistant_data.py --output_directory=data/oasst \\
        --input_file=2023-04-12_oasst_all.trees.jsonl.gz

Without ``--input_file`` the trees file is read from
``<output_directory>/2023-04-12_oasst_all.trees.jsonl.gz`` if it is there (nothing is downloaded). How
trees become conversations, labels and the 95/5 split: ``megatron_align/data/steerlm/oasst.py``.
Bad input: one line ``file:line: field: problem``, exit 2.
"""

import argparse
import sys

from megatron_align.config.errors import run_cli
from megatron_align.data.steerlm.inputs import oasst_input
from megatron_align.data.steerlm.oasst import OASST_FILE, preprocess_oasst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-dir", "--output_directory", required=True,
                        help="folder for train.jsonl and val.jsonl (created if missing)")
    parser.add_argument("--input_file", default=None, help=f"the OASST trees file ({OASST_FILE}, or .jsonl)")
    args = parser.parse_args(argv)

    def run() -> int:
        counts = preprocess_oasst(oasst_input(args.input_file, args.output_directory), args.output_directory)
        print(f"oasst: {counts['trees']} trees -> {counts['train']} train / {counts['val']} val "
              f"conversations in {args.output_directory}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
