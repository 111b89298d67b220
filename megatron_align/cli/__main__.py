"""``python -m megatron_align.cli ...`` is ``megatron-align ...``."""

import sys

from megatron_align.cli.main import main

sys.exit(main())
