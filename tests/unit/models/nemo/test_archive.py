"""models/nemo/archive: NeMo's tar layout (``./`` names, plain or gzip) and its extracted directory are read;
traversal, absolute names, links and special files are refused with one line before anything is written."""

import io
import os
import tarfile

import pytest

from megatron_align.models.nemo.archive import NemoArchive
from megatron_align.models.nemo.errors import NemoFormatError

FILES = {"model_config.yaml": b"num_layers: 2\n", "model_weights/metadata.json": b"{}",
         "model_weights/common.pt": b"x", "0123abcd_tokenizer.model": b"spm"}


def _nemo_tar(path, files=FILES, mode="w:", extra=()):
    """As NeMo writes it: ``add(dir, arcname=".")`` -> a ``.`` member and ``./``-prefixed names."""
    with tarfile.open(path, mode) as tar:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


@pytest.mark.parametrize("mode", ["w:", "w:gz"])
def test_reads_nemo_tarballs_with_dot_slash_names(tmp_path, mode):
    path = _nemo_tar(tmp_path / "m.nemo", mode=mode)
    with NemoArchive(path) as nemo:
        assert nemo.names() == sorted(FILES)
        assert nemo.read_text("model_config.yaml") == "num_layers: 2\n"
        assert "model_weights" in nemo.dirs
        out = nemo.extract("model_weights", tmp_path / "x")
    assert sorted(os.listdir(out)) == ["common.pt", "metadata.json"]
    assert (out / "metadata.json").read_bytes() == b"{}"


def test_reads_an_extracted_directory_and_refuses_symlinks_in_it(tmp_path):
    root = tmp_path / "extracted"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    with NemoArchive(root) as nemo:
        assert nemo.names() == sorted(FILES)
        assert nemo.extract("model_weights", tmp_path / "unused") == root / "model_weights"  # no copy
    (root / "model_weights" / "leak").symlink_to("/etc/passwd")
    with pytest.raises(NemoFormatError, match="model_weights/leak is a symlink"):
        NemoArchive(root)


def _member(name, kind=tarfile.REGTYPE, linkname="", size=0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


@pytest.mark.parametrize("info, data, message", [
    (_member("./../../evil.txt", size=4), b"evil", r"path leaves the archive"),
    (_member("/tmp/evil.txt", size=4), b"evil", r"absolute path"),
    (_member("./model_weights/link", tarfile.SYMTYPE, "../../../../etc/passwd"), None, r"is a link"),
    (_member("./model_weights/hard", tarfile.LNKTYPE, "model_config.yaml"), None, r"is a link"),
    (_member("./fifo", tarfile.FIFOTYPE), None, r"not a regular file"),
    (_member("./a\\..\\b", size=1), b"x", r"unsafe characters"),
])
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, info, data, message):
    work = tmp_path / "work"
    work.mkdir()
    path = _nemo_tar(work / "bad.nemo", extra=[(info, data)])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(NemoFormatError, match=message) as err:
        NemoArchive(path)
    assert "\n" not in str(err.value) and "bad.nemo" in str(err.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not (tmp_path / "evil.txt").exists() and not os.path.exists("/tmp/evil.txt")


def test_not_a_tarball_and_duplicates(tmp_path):
    junk = tmp_path / "junk.nemo"
    junk.write_bytes(b"\x00" * 10 + b"not a tar")
    with pytest.raises(NemoFormatError, match="not a .nemo tarball"):
        NemoArchive(junk)
    dup = _nemo_tar(tmp_path / "dup.nemo", extra=[(_member("model_config.yaml", size=1), b"y")])
    with pytest.raises(NemoFormatError, match="appears twice"):
        NemoArchive(dup)
    with pytest.raises(NemoFormatError, match="no such file"):
        NemoArchive(tmp_path / "missing.nemo")
