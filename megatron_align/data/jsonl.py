"""Lazy random access to JSONL files through a line-offset index.

A JSONL file is never loaded whole: ``JsonlFile`` scans its bytes once (in 4 MiB chunks, vectorised with
numpy) to record where each non-blank line starts and ends, then reads record ``k`` with one positioned read
(``os.pread``: a seek and a read that do not disturb any other reader). The index is ``int64 [N, 3]`` =
(byte offset, byte length, 1-based line number) - 24 bytes per record, memory-mapped when loaded from cache.

Caching: the index is saved as ``<name>.<hash>.idx.npy`` + ``.json`` (the file's size and mtime) in
``index_mapping_dir`` (NeMo's key), or next to the JSONL file when that is None; when neither is writable it
is kept in memory only. A cached index is used only while the file's size and mtime are unchanged.

Blank (whitespace-only) lines are not records but still count for line numbers; a UTF-8 byte-order mark at
the start of the file is skipped; ``\\r\\n`` line ends are accepted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

import numpy as np

from megatron_align.data.errors import RECORD_FIELD, DataError

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
_CHUNK = 1 << 22
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


def build_line_index(path: str | os.PathLike, chunk_size: int = _CHUNK) -> np.ndarray:
    """Scan ``path`` once; returns ``int64 [N, 3]``: (byte offset, byte length, line number) per non-blank
    line."""
    rows: list[np.ndarray] = []
    line_no = 0  # lines completed before the current buffer
    base = 0  # file offset of buf[0]
    carry = b""
    with open(path, "rb") as f:
        head = f.read(len(_BOM))
        if head == _BOM:
            base = len(_BOM)
        else:
            carry = head
        while True:
            data = f.read(chunk_size)
            buf = carry + data
            last = not data
            if not buf:
                break
            arr = np.frombuffer(buf, dtype=np.uint8)  # [n_bytes]
            ends = np.flatnonzero(arr == 10)  # [n_lines] positions of "\n"
            if last and (not len(ends) or ends[-1] != len(buf) - 1):
                ends = np.append(ends, len(buf))  # final line without "\n"
            if len(ends):
                starts = np.concatenate(([0], ends[:-1] + 1))  # [n_lines]
                solid = np.zeros(len(arr) + 1, dtype=np.int32)  # [n_bytes + 1] non-blank bytes before each
                np.cumsum(~_WHITESPACE[arr], dtype=np.int32, out=solid[1:])
                non_blank = solid[ends] - solid[starts] > 0  # [n_lines]
                numbers = line_no + 1 + np.arange(len(ends), dtype=np.int64)
                keep = np.flatnonzero(non_blank)
                rows.append(np.stack([base + starts[keep], ends[keep] - starts[keep], numbers[keep]], axis=1))
                line_no += len(ends)
                consumed = int(ends[-1]) + 1
            else:
                consumed = 0
            carry = buf[consumed:]
            base += consumed
            if last:
                break
    if not rows:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64, copy=False)


def _cache_paths(path: str, index_dir: str | None) -> tuple[str, str]:
    real = os.path.realpath(path)
    tag = hashlib.sha1(real.encode("utf-8")).hexdigest()[:12]
    directory = index_dir if index_dir else os.path.dirname(real)
    stem = os.path.join(directory, f"{os.path.basename(real)}.{tag}.idx")
    return stem + ".npy", stem + ".json"


def load_line_index(path: str | os.PathLike, index_dir: str | None = None, use_cache: bool = True,
                    ) -> np.ndarray:
    """The line index of ``path``: from cache when its size and mtime still match, else built (and cached)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(path, None, None, f"cannot read the data file ({e.strerror or e})") from None
    if os.path.isdir(path):
        raise DataError(path, None, None, "is a directory, not a JSONL file")
    key = {"version": INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    npy, meta = _cache_paths(path, index_dir)
    if use_cache:
        try:
            with open(meta) as f:
                if json.load(f) == key:
                    index = np.load(npy, mmap_mode="r")
                    if index.ndim == 2 and index.shape[1] == 3:
                        return index
        except (OSError, ValueError):
            pass
    index = build_line_index(path)
    if use_cache:
        try:
            os.makedirs(os.path.dirname(npy), exist_ok=True)
            suffix = f".tmp{os.getpid()}.{threading.get_ident()}"
            with open(npy + suffix, "wb") as f:
                np.save(f, index)
            os.replace(npy + suffix, npy)
            with open(meta + suffix, "w") as f:
                json.dump(key, f)
            os.replace(meta + suffix, meta)
        except OSError as e:
            logger.info("%s: line index not cached (%s); it is kept in memory", path, e.strerror or e)
    return index


class JsonlFile:
    """A JSONL file read lazily: ``len()`` records, ``raw(k)`` / ``record(k)`` read one line by seeking."""

    def __init__(self, path: str | os.PathLike, index_dir: str | None = None, use_cache: bool = True):
        self.path = os.fspath(path)
        """The file, as given (error messages name it this way)."""
        self.index = load_line_index(self.path, index_dir, use_cache)
        """``int64 [N, 3]``: byte offset, byte length and 1-based line number of each record."""
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def line_number(self, k: int) -> int:
        """1-based line number of record ``k`` in the file."""
        return int(self.index[k, 2])

    def where(self, k: int) -> str:
        """``file:line`` of record ``k``."""
        return f"{self.path}:{self.line_number(k)}"

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # re-open in forked data-loader workers
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        return self._fd

    def raw(self, k: int) -> bytes:
        """The bytes of record ``k`` (without its line end)."""
        if not -len(self) <= k < len(self):
            raise IndexError(f"record {k} out of range for {self.path} ({len(self)} records)")
        offset, length, _ = (int(v) for v in self.index[k])
        fd = self._descriptor()
        if hasattr(os, "pread"):
            data = os.pread(fd, length, offset)
        else:  # pragma: no cover - platforms without pread
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, length)
        if len(data) != length:
            raise DataError(self.path, self.line_number(k), None,
                            "the file changed while it was being read (rebuild its index by restarting)")
        return data

    def record(self, k: int) -> object:
        """Record ``k`` parsed as JSON; a ``DataError`` (``file:line: (record): ...``) when it is not JSON."""
        data = self.raw(k)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(self.path, self.line_number(k), RECORD_FIELD,
                            f"not valid UTF-8 (byte {data[e.start]:#04x} at byte {e.start + 1} of the line)",
                            ) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(self.path, self.line_number(k), RECORD_FIELD,
                            f"invalid JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise DataError(self.path, self.line_number(k), RECORD_FIELD,
                            "nesting too deep (JSON arrays / objects nested beyond what a record needs)"
                            ) from None

    def close(self) -> None:
        """Close the file descriptor (it is re-opened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"JsonlFile({self.path!r}, records={len(self)})"
