"""The EXO repository's ``pref_to_rw.py``: ``DATA_DIR/{train,test}.json`` preference records
``{prompt, chosen, rejected}`` -> ``DATA_DIR_p2r/`` with ``completions [chosen, rejected]`` and
``rewards [1, 0]``.

    python examples/exo/pref_to_rw.py DATA_DIR
"""

import sys

from megatron_align.cli.exo import exo_main


def main(argv: list[str]) -> int:
    return exo_main(["pref_to_rw", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
