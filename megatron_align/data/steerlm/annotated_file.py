"""The output file of attribute annotation: resumable, append-only, durable after every batch.

Line ``k`` of the output is the ``k``-th record of the input (blank input lines do not count), annotated.
``AnnotatedFile(path)``:

* opens (creates) the file and takes an exclusive ``flock`` on it: a second annotator writing the same file
  is refused;
* ``resume(input_rows, turns)``: drops a torn last line (bytes after the last ``\\n``, left by a crash in the
  middle of a write) and checks every complete line against its input record (``annotate.check_annotated``:
  the same record but for the rated turns' labels, which must be well-formed). Consumes those input rows
  from ``input_rows`` and returns how many there were; a line that does not match is a ``DataError``
  (``out.jsonl:k: field: ...``) telling the user the file belongs to another input;
* ``append(records)``: writes the lines in one ``write``, then ``flush`` + ``fsync``: a record on disk is
  complete, and a crash loses at most the batch being written.

Lines are ``json.dumps(record)`` (default separators, non-ASCII escaped), the bytes NeMo-Aligner's
``attribute_annotate.py`` writes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator

from megatron_align.data.errors import RECORD_FIELD, DataError, RecordError
from megatron_align.data.steerlm.annotate import check_annotated

logger = logging.getLogger(__name__)


class AnnotatedFile:
    """An annotation output file (module docstring); use as a context manager."""

    def __init__(self, path: str | os.PathLike, input_path: str | os.PathLike):
        self.path = os.fspath(path)
        self.input_path = os.fspath(input_path)
        created = not os.path.exists(self.path)
        try:
            self.file = open(self.path, "a+b")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise DataError(self.path, None, None,
                            f"cannot open the output file ({e.strerror or e})") from None
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise DataError(self.path, None, None,
                            "another attribute_annotate.py is writing this file") from None
        if created:  # make the new directory entry durable too
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def __enter__(self) -> AnnotatedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()  # releases the lock

    def _drop_torn_tail(self) -> None:
        f = self.file
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        keep, pos = 0, size
        while pos > 0 and not keep:  # find the last newline, reading backwards
            start = max(0, pos - (1 << 16))
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        logger.warning("%s: dropped a torn last line (%d bytes, from an interrupted run); its record is "
                       "annotated again", self.path, size - keep)

    def resume(self, input_rows: Iterator[tuple[int, object]], turns: str) -> int:
        """Check the lines already written against ``input_rows`` (consuming as many); their count."""
        self._drop_torn_tail()
        self.file.seek(0)
        done = 0
        hint = ("this output was written for another input: pass a new --output-file, or delete it to "
                "start over")
        for k, raw in enumerate(self.file, start=1):
            row = next(input_rows, None)
            if row is None:
                raise DataError(self.path, k, None, f"the output has more records than {self.input_path} "
                                                    f"({k - 1}); {hint}")
            number, source = row
            try:
                annotated = json.loads(raw)
            except ValueError as e:
                raise DataError(self.path, k, RECORD_FIELD, f"invalid JSON ({e}); {hint}") from None
            try:
                check_annotated(source, annotated, turns)
            except RecordError as e:
                raise DataError(self.path, k, e.field, f"{e.problem}: it is not {self.input_path}:{number} "
                                                       f"annotated; {hint}") from None
            done = k
        return done

    def append(self, records: list[dict]) -> None:
        """Write ``records`` (one line each) and make them durable."""
        if not records:
            return
        self.file.write(b"".join(json.dumps(r).encode("ascii") + b"\n" for r in records))
        self.file.flush()
        os.fsync(self.file.fileno())
