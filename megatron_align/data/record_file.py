"""A data file read record by record with one error policy: JSONL (lazy, ``data/jsonl.py``) or a JSON array
(read whole, the EXO repository's ``train.json``), chosen by content, and the base class of readers that turn
record ``k`` into a training item or None.

``RecordFile.item(k)`` reads record ``k`` and calls the subclass's ``parse(obj, k)``; a ``RecordError`` it
raises becomes ``file:line: field: problem`` - raised under ``on_bad_record=error``, counted once per line in
``report`` under ``skip`` - so every reader reports bad data the same way.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from megatron_align.data.errors import RECORD_FIELD, DataError, DataReport, RecordError, check_on_bad_record
from megatron_align.data.jsonl import JsonlFile


class JsonArrayFile:
    """A JSON array file read whole, with each element's line number (``JsonlFile``'s interface)."""

    def __init__(self, path: str, text: str):
        self.path = path
        dec = json.JSONDecoder()
        start = text.index("[") + 1
        self._records, self._lines = [], []
        pos, line = start, text.count("\n", 0, start) + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                line += text[pos] == "\n"
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                break
            try:
                obj, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(path, e.lineno, RECORD_FIELD, f"invalid JSON: {e.msg} (column {e.colno})"
                                ) from None
            self._records.append(obj)
            self._lines.append(line)
            line += text.count("\n", pos, end)
            pos = end

    def __len__(self) -> int:
        return len(self._records)

    def record(self, k: int) -> object:
        return self._records[k]

    def line_number(self, k: int) -> int:
        return self._lines[k]

    def where(self, k: int) -> str:
        return f"{self.path}:{self._lines[k]}"


def open_records(path: str | os.PathLike, index_dir: Optional[str] = None):
    """A JSONL file (lazy) or a JSON array file (read whole), by its first non-blank character."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as e:
        raise DataError(path, None, None, f"cannot read: {e.strerror or e}") from None
    if head.startswith(b"["):
        with open(path, encoding="utf-8-sig") as f:
            return JsonArrayFile(path, f.read())
    return JsonlFile(path, index_dir=index_dir)


class RecordFile:
    """One data file; ``item(k)`` is record ``k`` parsed by ``parse`` or None (skipped, counted)."""

    def __init__(self, path, on_bad_record: str = "error", index_dir: Optional[str] = None):
        self.on_bad_record = check_on_bad_record(on_bad_record)
        self.file = open_records(path, index_dir)
        self.path = self.file.path
        self.report = DataReport(self.path)
        """What was skipped, dropped, truncated or ignored, by reason."""
        if len(self.file) == 0:
            raise DataError(self.path, None, None, "no records (the file is empty)")

    def __len__(self) -> int:
        return len(self.file)

    def bad(self, k: int, field_name: Optional[str], problem: str) -> None:
        """Record ``k`` is malformed: raise (``error``) or count it (``skip``)."""
        err = DataError(self.path, self.file.line_number(k), field_name, problem)
        if self.on_bad_record == "error":
            raise err
        self.report.add("bad_record", str(err), key=err.line)

    def parse(self, obj: object, k: int):
        """The item of record ``k`` (``obj``), None to skip it; ``RecordError`` when it is malformed."""
        raise NotImplementedError

    def item(self, k: int):
        """Record ``k`` as an item; None when skipped or dropped (counted)."""
        try:
            obj = self.file.record(k)
        except DataError as err:
            if self.on_bad_record == "error":
                raise
            self.report.add("bad_record", str(err), key=err.line)
            return None
        try:
            return self.parse(obj, k)
        except RecordError as e:
            self.bad(k, e.field, e.problem)
            return None
