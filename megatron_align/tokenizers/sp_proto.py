"""Just enough protobuf to read and extend a sentencepiece ``ModelProto`` without the protobuf package.

The ``sentencepiece`` wheel reads models natively but exposes piece types only through protobuf, which is not
a dependency here. A ``ModelProto`` keeps its vocabulary as repeated field 1 (``SentencePiece``: piece = 1,
score = 2, type = 3), so listing piece types is a short walk over the wire format, and adding a piece is
appending one more field-1 record (protobuf parsers concatenate repeated fields in order of appearance).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# sentencepiece_model.proto, SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of one message; value is int for varints, bytes otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _read_varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            val, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield field, wire, val


def piece_types(model_proto: bytes) -> list[tuple[str, int]]:
    """(piece, type) for every vocabulary entry, in id order."""
    out = []
    for field, wire, val in _fields(model_proto):
        if field != 1 or wire != 2:
            continue
        piece, ptype = "", NORMAL
        for sub_field, _, sub_val in _fields(val):
            if sub_field == 1:
                piece = sub_val.decode("utf-8")
            elif sub_field == 3:
                ptype = sub_val
        out.append((piece, ptype))
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def append_pieces(model_proto: bytes, pieces: list[str], piece_type: int = USER_DEFINED) -> bytes:
    """``model_proto`` with ``pieces`` appended (score 0, the trainer's score for user-defined symbols)."""
    extra = bytearray()
    for piece in pieces:
        text = piece.encode("utf-8")
        body = (
            b"\x0a"
            + _varint(len(text))
            + text
            + b"\x15"
            + struct.pack("<f", 0.0)
            + b"\x18"
            + _varint(piece_type)
        )
        extra += b"\x0a" + _varint(len(body)) + body
    return bytes(model_proto) + bytes(extra)
