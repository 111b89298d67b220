"""Reading the published raw files (JSONL, gzipped JSONL, parquet) and writing JSONL as NeMo-Aligner does.

* ``read_rows(path)``: ``(number, object)`` per record. JSONL / ``.jsonl.gz`` (gzip is recognised by its
  magic bytes, whatever the name): ``number`` is the 1-based line, blank lines skipped; invalid JSON or UTF-8
  is a ``DataError`` (``file:line: (record): ...``). Parquet (``.parquet``, read with pyarrow, the optional
  ``[parquet]`` extra): ``number`` is the 1-based row.
* ``write_jsonl(path, objs)``: one ``json.dumps(obj, ensure_ascii=False)`` per line (default separators
  ``", "`` / ``": "``, UTF-8, ``\\n``), the bytes NeMo-Aligner's scripts write; written to a temporary file
  and renamed, so a failed run leaves no half-written output.
* ``record_error(path, number, err)``: a validator's ``RecordError`` as a ``DataError`` at ``path:number``.
* ``find_input(directory, patterns)``: the first of a dataset's published file names found in a local copy.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence

from megatron_align.config.errors import UserError
from megatron_align.data.errors import RECORD_FIELD, DataError, RecordError

_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open_bytes(path: str):
    try:
        return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    except OSError as e:
        raise DataError(path, None, None, f"cannot read the file ({e.strerror or e})") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """``(line number, decoded JSON)`` for each non-blank line of a JSONL or gzipped JSONL file."""
    path = os.fspath(path)
    with _open_bytes(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, number, RECORD_FIELD,
                                    f"not valid UTF-8 (byte {e.start + 1})") from None
                if number == 1:
                    text = text.removeprefix("\ufeff")
                try:
                    yield number, json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, number, RECORD_FIELD,
                                    f"invalid JSON: {e.msg} (column {e.colno})") from None
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise DataError(path, None, None, f"cannot read the file ({e})") from None


def read_parquet(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """``(row number, row as a dict)`` for each row of a parquet file (needs pyarrow)."""
    path = os.fspath(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow, or "
                        "pip install -e '.[parquet]'); or pass the published .jsonl.gz file") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise DataError(path, None, None, f"cannot read the parquet file ({e})") from None
    yield from enumerate(table.to_pylist(), start=1)


def read_rows(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """Records of a JSONL(.gz) or ``.parquet`` file, numbered (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, None, None, "no such file" if not os.path.exists(path) else "not a file")
    return read_parquet(path) if path.endswith(".parquet") else read_jsonl(path)


def write_jsonl(path: str | os.PathLike, objs: Iterable[object]) -> int:
    """Write ``objs`` as NeMo-Aligner does (module docstring); returns the number of lines."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for obj in objs:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def record_error(path: str | os.PathLike, number: int, err: RecordError) -> DataError:
    """``err`` (field + problem) placed at ``path:number``."""
    return DataError(path, number, err.field, err.problem)


def find_input(directory: str | os.PathLike, patterns: Sequence[str]) -> list[str] | None:
    """The files of the first pattern (glob, relative to ``directory``) that matches, sorted; None if none."""
    for pattern in patterns:
        found = sorted(p for p in glob.glob(os.path.join(os.fspath(directory), pattern)) if os.path.isfile(p))
        if found:
            return found
    return None
