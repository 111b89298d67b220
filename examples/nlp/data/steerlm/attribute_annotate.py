"""Label every answer of SteerLM SFT records with a regression reward model's attribute predictions.

    python examples/nlp/gpt/serve_reward_model.py rm_model_file=ckpts/rm inference.port=1424 &
    python examples/nlp/data/steerlm/attribute_annotate.py \\
        --input-file=data/oasst/train.jsonl --output-file=data/oasst/train_labeled.jsonl --port=1424

Each ``Assistant`` turn (``--turns=labeled``: NeMo-Aligner's rule, each turn with a non-null label) gets
``label`` = ``quality:q,toxicity:t,...,verbosity:v``: the server's nine predictions for the conversation up
to that turn, clamped to 0..4 and rounded (``megatron_align/data/steerlm/annotate.py``). Texts are rendered
as ``process_to_regression_format.py`` renders them for training (NeMo-Aligner's system prompt unless
``--use-record-system``), sent ``--batch-size`` at a time.

Resumable: output line k is input record k; a rerun checks the lines already there against the input, drops a
torn last line, and annotates the rest; each batch is fsynced once written
(``megatron_align/data/steerlm/annotated_file.py``). Exit 2 with one line for bad input
(``file:line: field: problem``), an output that belongs to another input, or a reward server that stays
unreachable or errs after ``--retries`` retries.
"""

import argparse
import os
import sys
import time

from tqdm import tqdm

from megatron_align.config.errors import run_cli
from megatron_align.data.errors import RecordError
from megatron_align.data.steerlm.annotate import annotate_batches, annotation_texts
from megatron_align.data.steerlm.annotated_file import AnnotatedFile
from megatron_align.data.steerlm.io import read_rows, record_error
from megatron_align.data.steerlm.records import SYSTEM_PROMPT
from megatron_align.log import setup_logging
from megatron_align.scoring.remote import RewardClient

DELAY_ENV = "MEGATRON_ALIGN_ANNOTATE_BATCH_DELAY_S"
"""Testing hook: seconds to sleep after each written batch (lets a test kill the run midway)."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-file", required=True, help="SFT records (JSONL)")
    p.add_argument("--output-file", required=True, help="annotated records (JSONL); resumed if present")
    p.add_argument("--port", type=int, default=5555, help="reward server port (inference.port)")
    p.add_argument("--host", default="127.0.0.1", help="reward server host")
    p.add_argument("--batch-size", type=int, default=64, help="texts per request (server limit: "
                                                              "inference.max_sentences_per_request)")
    p.add_argument("--retries", type=int, default=5, help="retries of a failed request before giving up")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubling)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer")
    p.add_argument("--add-eos", action="store_true", help="ask the server to append eos to each text")
    p.add_argument("--turns", choices=("assistant", "labeled"), default="assistant",
                   help="assistant: every Assistant turn; labeled: turns with a non-null label "
                        "(NeMo-Aligner's rule)")
    p.add_argument("--use-record-system", action="store_true",
                   help="render each record's system prompt instead of NeMo-Aligner's fixed one")
    args = p.parse_args(argv)
    for name in ("batch_size", "timeout"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.retries < 0 or args.backoff < 0:
        p.error("--retries and --backoff must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    system = None if args.use_record_system else SYSTEM_PROMPT
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)

    def run() -> int:
        setup_logging()
        total = texts = 0
        for number, record in read_rows(args.input_file):  # validate everything before any request
            try:
                texts += len(annotation_texts(record, args.turns, system))
            except RecordError as e:
                raise record_error(args.input_file, number, e) from None
            total += 1
        client = RewardClient(args.host, args.port, args.timeout, args.retries, args.backoff, args.add_eos)
        rows = read_rows(args.input_file)
        with AnnotatedFile(args.output_file, args.input_file) as out:
            done = out.resume(rows, args.turns)
            start = time.monotonic()
            with tqdm(total=total, initial=done, unit="record", desc="annotating") as bar:
                for batch in annotate_batches((r for _, r in rows), client.score, args.batch_size,
                                              args.turns, system):
                    out.append(batch)
                    bar.update(len(batch))
                    if delay:
                        time.sleep(delay)
        print(f"annotated {total - done} records in {time.monotonic() - start:.1f} s ({done} already in "
              f"{args.output_file}; {total} records, {texts} rated turns in all) -> {args.output_file}")
        if client.exceeded:
            print(f"warning: {client.exceeded} texts were longer than the reward model's context and were "
                  "cut to it (scored at their last kept token)", file=sys.stderr)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
