"""``models/dcp_reader.decode_byte_item``: byte items of a shard file decode under ``weights_only``, and a
Transformer Engine ``_extra_state`` blob (a uint8 tensor that TE unpickles itself) is replayed through the
allow-list first."""

import io
import os
import pickle

import pytest
import torch

from megatron_align.config.errors import CheckpointError
from megatron_align.models.dcp_reader import decode_byte_item


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def _item(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _te_blob(state) -> torch.Tensor:
    """As TE's get_extra_state writes it: the pickled state dict as a uint8 tensor."""
    return torch.frombuffer(bytearray(pickle.dumps(state)), dtype=torch.uint8)


def test_plain_items_decode():
    assert decode_byte_item(_item([None]), "x") == [None]
    out = decode_byte_item(_item({"a": torch.arange(3)}), "x")
    assert torch.equal(out["a"], torch.arange(3))


def test_te_shaped_blob_with_tensors_and_numbers_passes():
    state = {"scale_fwd": torch.ones(3), "amax_history_fwd": torch.zeros(4, 3), "extra_fp8_variables":
             {"num_gemms": 1, "fp8_max_fwd": 448.0, "name": "fc1"}}
    blob = _te_blob(state)
    out = decode_byte_item(_item([blob]), "x")
    assert torch.equal(out[0], blob)


@pytest.mark.parametrize("where", ["item", "te_blob", "te_blob_nested_storage"])
def test_code_is_refused_with_the_global_named(where):
    if where == "item":
        item = _item([_Evil()])
    elif where == "te_blob":
        item = _item([_te_blob({"scale_fwd": torch.ones(2), "evil": _Evil()})])
    else:  # a tensor storage whose nested torch.save bytes hold the payload
        inner = io.BytesIO()
        torch.save(_Evil(), inner)
        item = _item([_te_blob({"x": _NestedBytes(inner.getvalue())})])
    with pytest.raises(CheckpointError, match=r"ckpt/__0_0\.distcp.*refusing to unpickle (posix|os)\.system"):
        decode_byte_item(item, "ckpt/__0_0.distcp: item a._extra_state/shard_0_1")


class _NestedBytes:
    """Pickles as torch.storage._load_from_bytes(data): the path by which plain-pickled tensors nest bytes."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)
