"""Arrays TensorFlow uses in place: aligned allocation and .npz files read into it."""

import io
import zipfile

import numpy as np
import pytest

from components.core.io import arrays


@pytest.mark.parametrize("shape, dtype",
                         [((7, 3), "float32"), ((5,), "int64"), ((0, 4), "float32")])
def test_aligned_arrays_start_on_the_boundary(shape, dtype):
    for _ in range(200):  # whatever offset the allocator hands out
        array = arrays.aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == np.dtype(dtype)
        assert arrays.is_aligned(array) and array.flags.writeable
    assert not arrays.is_aligned(arrays.aligned_empty((8, 4))[:, :2])  # not contiguous


def test_an_npz_file_reads_back_equal_and_aligned_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "READ_CHUNK_BYTES", 24)  # many chunks, a partial last one
    rng = np.random.default_rng(0)
    saved = {"train_features": rng.normal(size=(13, 5)).astype(np.float32),
             "train_labels": np.arange(13), "val_features": np.zeros((0, 5), np.float32)}
    np.savez(tmp_path / "f.npz", **saved)
    loaded = arrays.load_npz_aligned(str(tmp_path / "f.npz"))
    assert sorted(loaded) == sorted(saved)
    for name, array in saved.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype and arrays.is_aligned(loaded[name])


def test_a_member_shorter_than_its_header_says_is_refused(tmp_path):
    member = io.BytesIO()
    np.lib.format.write_array(member, np.arange(10, dtype=np.float32))
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.writestr("x.npy", member.getvalue()[:-8])  # two floats missing
    with pytest.raises(ValueError, match=r"x.npy ends after 32 of 40 bytes.*run the step"):
        arrays.load_npz_aligned(str(tmp_path / "short.npz"))


def test_an_array_of_objects_is_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a plain C-order array"):
        arrays.load_npz_aligned(str(tmp_path / "o.npz"))
