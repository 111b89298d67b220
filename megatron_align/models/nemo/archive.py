"""Opening a ``.nemo``: NeMo's tarball (uncompressed; gzip before NeMo 1.7) or its extracted directory,
without trusting a single member name.

NeMo writes ``tarfile.open(f, "w:")`` + ``add(dir, arcname=".")``, so members are ``./model_config.yaml``,
``./model_weights/...`` and ``./<hex>_tokenizer.model`` (docs/nemo_format_research.md, section 1). Names are
normalised (one leading ``./`` dropped) and only regular files and directories are admitted: a member that is
a link, a device or a FIFO, an absolute name, a ``..`` component, a backslash or a NUL is refused with one
line naming it, before anything is read, and nothing is ever written outside the directory the caller gives
``extract``. Member count and total size are bounded. In a directory, symlinks are refused the same way.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from megatron_align.models.nemo.errors import NemoFormatError

MAX_MEMBERS = 1_000_000
"""Most members a .nemo may hold (zarr writes one file per chunk: ~10 per layer and parameter)."""
MAX_TOTAL_BYTES = 4 << 40
"""Most bytes its members may add up to (4 TiB)."""


def normalize_member(name: str, where: str) -> str:
    """``./a/b`` -> ``a/b``; ``NemoFormatError`` for names that could point anywhere but inside."""
    if "\x00" in name or "\\" in name:
        raise NemoFormatError(f"{where}: member {name!r}: unsafe characters in its name; refused")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise NemoFormatError(f"{where}: member {name!r}: absolute path; refused")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if any(p == ".." for p in parts):
        raise NemoFormatError(f"{where}: member {name!r}: path leaves the archive ('..'); refused")
    return "/".join(parts)


class NemoArchive:
    """The members of one ``.nemo`` (tar or directory), by normalised name. Use as a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tar: Optional[tarfile.TarFile] = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._files: dict[str, Path] = {}
        self.dirs: set[str] = set()
        if self.path.is_dir():
            self._index_directory()
        elif self.path.is_file():
            self._index_tar()
        else:
            raise NemoFormatError(f"{self.path}: no such file or directory")

    # -- indexing ------------------------------------------------------------------------------------------
    def _index_tar(self) -> None:
        try:
            tar = tarfile.open(self.path, "r:")
        except tarfile.ReadError:
            try:  # archives written before NeMo 1.7 were gzip-compressed
                tar = tarfile.open(self.path, "r:gz")
            except (tarfile.ReadError, OSError, EOFError) as e:
                raise NemoFormatError(f"{self.path}: not a .nemo tarball ({e})") from None
        self._tar = tar
        total = 0
        try:
            for i, m in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise NemoFormatError(f"{self.path}: more than {MAX_MEMBERS} members; refused")
                name = normalize_member(m.name, str(self.path))
                if m.isdir():
                    if name:
                        self.dirs.add(name)
                    continue
                if not m.isreg():
                    kind = "a link" if (m.issym() or m.islnk()) else "not a regular file"
                    raise NemoFormatError(f"{self.path}: member {m.name!r} is {kind}; refused")
                if m.sparse is not None:
                    raise NemoFormatError(f"{self.path}: member {m.name!r} is a sparse file; refused")
                total += m.size
                if total > MAX_TOTAL_BYTES:
                    raise NemoFormatError(f"{self.path}: members add up to more than {MAX_TOTAL_BYTES} bytes")
                if name in self._members:
                    raise NemoFormatError(f"{self.path}: member {name!r} appears twice; refused")
                self._members[name] = m
                self._add_parents(name)
        except (tarfile.TarError, OSError, EOFError) as e:
            self.close()
            raise NemoFormatError(f"{self.path}: truncated or unreadable tarball ({e})") from None
        except NemoFormatError:
            self.close()
            raise

    def _index_directory(self) -> None:
        root = self.path.resolve()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for entry in dirnames + filenames:
                full = Path(dirpath) / entry
                rel = full.relative_to(root).as_posix()
                if full.is_symlink():
                    raise NemoFormatError(f"{self.path}: {rel} is a symlink; refused (copy the files in)")
                if full.is_dir():
                    self.dirs.add(rel)
                elif full.is_file():
                    self._files[rel] = full
                else:
                    raise NemoFormatError(f"{self.path}: {rel} is not a regular file; refused")

    def _add_parents(self, name: str) -> None:
        parent = PurePosixPath(name).parent
        while str(parent) not in (".", ""):
            self.dirs.add(str(parent))
            parent = parent.parent

    # -- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every regular file, normalised, sorted."""
        return sorted(self._files if self._tar is None else self._members)

    def has(self, name: str) -> bool:
        return name in (self._files if self._tar is None else self._members)

    def open(self, name: str) -> BinaryIO:
        if not self.has(name):
            raise NemoFormatError(f"{self.path}: no member {name!r}")
        if self._tar is None:
            return open(self._files[name], "rb")
        return self._tar.extractfile(self._members[name])  # type: ignore[return-value]

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def read_text(self, name: str) -> str:
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            raise NemoFormatError(f"{self.path}: {name} is not UTF-8 text") from None

    def extract(self, prefix: str, dest: str | os.PathLike) -> Path:
        """Copy the regular files under ``prefix`` (a directory member) to ``dest/prefix``; returns that path.
        Paths are built from the normalised names only, so nothing lands outside ``dest``. An extracted
        directory needs no copy: its own folder is returned."""
        if self._tar is None:
            return self.path / prefix
        dest = Path(dest).resolve()
        out = dest / prefix
        out.mkdir(parents=True, exist_ok=True)
        for name in self.names():
            if not name.startswith(prefix.rstrip("/") + "/"):
                continue
            target = (dest / name).resolve()
            if dest not in target.parents:  # cannot happen after normalize_member; checked anyway
                raise NemoFormatError(f"{self.path}: member {name!r} would land outside {dest}; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return out

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> NemoArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_nemo_checkpoint(path: str | os.PathLike) -> bool:
    """A ``.nemo`` tarball, or a directory laid out as an extracted one (``model_config.yaml`` and NeMo's
    weights, no megatron_align ``metadata.json``). Reads no member."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".nemo" or tarfile.is_tarfile(p)
    return (p.is_dir() and (p / "model_config.yaml").is_file() and not (p / "metadata.json").is_file()
            and ((p / "model_weights").is_dir() or (p / "model_weights.ckpt").is_file()))
