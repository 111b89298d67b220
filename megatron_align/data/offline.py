"""Records of the offline stages (seed 003): prompts ``{"input": ...}`` for the random sampler and samples
``{"input": ..., "output": ...}`` for the reward labeler (key names configurable), read from several files
blended by ``concat_sampling_probabilities``.

Each record must be an object whose input (and, for samples, output) is a string; its other fields are kept
and written back out. A malformed record is ``file:line: field: problem`` (or skipped and counted); an empty
file is an error.

Blending (``blend``): of T = the files' total record count, file d gives ``apportion(p, T)[d]`` records (the
largest-remainder split, ``data/blending.apportion``): its first ones in file order, and the file again from
its start while its share is larger than the file. Files come in the order given. No randomness: no seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from megatron_align.data.errors import RecordError
from megatron_align.data.record_file import RecordFile


@dataclass(frozen=True)
class OfflineRecord:
    """One record and where it came from."""

    fields: dict
    path: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


class OfflineFile(RecordFile):
    """A prompt file (``output_key=None``) or a sample file."""

    def __init__(self, path, input_key: str = "input", output_key: Optional[str] = None,
                 on_bad_record: str = "error"):
        super().__init__(path, on_bad_record)
        self.input_key, self.output_key = input_key, output_key

    def parse(self, obj: object, k: int) -> OfflineRecord:
        if not isinstance(obj, dict):
            raise RecordError(None, f"a record is a JSON object, not {type(obj).__name__}")
        for key in (self.input_key, self.output_key):
            if key is None:
                continue
            if key not in obj:
                raise RecordError(key, "missing")
            if not isinstance(obj[key], str):
                raise RecordError(key, f"must be a string, not {type(obj[key]).__name__}")
        if not obj[self.input_key].strip():
            raise RecordError(self.input_key, "empty")
        return OfflineRecord(obj, self.path, self.file.line_number(k))


def blend_counts(sizes: Sequence[int], probabilities: Optional[Sequence[float]]) -> list[int]:
    """Records taken from each file (module docstring)."""
    from megatron_align.data.blending import apportion, normalize_probabilities

    return [int(c) for c in apportion(normalize_probabilities(probabilities, len(sizes)), sum(sizes))]


def blend(files: Sequence[OfflineFile], probabilities: Optional[Sequence[float]]) -> list[OfflineRecord]:
    """The blended records, skipped ones left out (counted in each file's ``report``)."""
    out = []
    for f, count in zip(files, blend_counts([len(f) for f in files], probabilities)):
        for i in range(count):
            rec = f.item(i % len(f))
            if rec is not None:
                out.append(rec)
    return out
