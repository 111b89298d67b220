"""models/nemo/weights: zarr arrays as megatron-core 0.5 writes them (bf16, edge chunks) read back exactly; a
torch_dist index carrying a pickle payload is refused with one line and nothing runs."""

import json
import os
import pickle

import pytest
import torch

from megatron_align.models.nemo.errors import NemoFormatError
from megatron_align.models.nemo.weights import read_weights, read_zarr_array, write_weights, write_zarr_array


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zarr_round_trip_with_edge_chunks(tmp_path, dtype):
    t = torch.randn(3, 5, 7).to(dtype)
    write_zarr_array(tmp_path / "a", t, [1, 2, 4])  # 5 and 7 do not divide: the edge chunks are padded
    assert sorted(os.listdir(tmp_path / "a"))[:3] == [".zarray", "0.0.0", "0.0.1"]
    back = read_zarr_array(tmp_path / "a")
    assert back.dtype == dtype and torch.equal(back, t)
    meta = json.loads((tmp_path / "a" / ".zarray").read_text())
    assert meta["dtype"] == {torch.float32: "<f4", torch.bfloat16: "bfloat16", torch.float16: "<f2"}[dtype]


def test_zarr_missing_or_short_chunk_is_one_line(tmp_path):
    write_zarr_array(tmp_path / "a", torch.ones(2, 4), [1, 4])
    (tmp_path / "a" / "1.0").write_bytes(b"\x00" * 3)
    with pytest.raises(NemoFormatError, match=r"1\.0: 3 bytes"):
        read_zarr_array(tmp_path / "a")
    (tmp_path / "a" / "1.0").unlink()
    with pytest.raises(NemoFormatError, match="chunk missing"):
        read_zarr_array(tmp_path / "a")


@pytest.mark.parametrize("backend", ["zarr", "torch_dist"])
def test_write_then_read_weights_skips_extra_state(tmp_path, backend):
    tensors = {
        "model.decoder.layers.mlp.linear_fc2.weight": torch.randn(2, 4, 6),
        "model.embedding.word_embeddings.weight": torch.randn(8, 4),
    }
    write_weights(
        tmp_path / "w",
        tensors,
        ["model.decoder.layers.mlp.linear_fc2._extra_state"],
        backend=backend,
        num_layers=2,
    )
    back = read_weights(tmp_path / "w")
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_payload_in_the_index_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = tmp_path / "w"
    write_weights(w, {"model.embedding.word_embeddings.weight": torch.ones(2, 2)}, backend="torch_dist")
    (w / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(NemoFormatError, match="refusing to unpickle") as err:
        read_weights(w)
    assert "\n" not in str(err.value) and not (tmp_path / "PWNED").exists()


def test_unknown_backend_is_one_line(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"sharded_backend": "tensorstore"}))
    with pytest.raises(NemoFormatError, match="sharded_backend='tensorstore'"):
        read_weights(tmp_path)
