"""Numpy arrays TensorFlow can use in place: allocated on a TENSOR_ALIGNMENT-byte boundary, and
read from an .npz archive straight into such memory (no second copy at any time).
"""

from __future__ import annotations

import zipfile

import numpy as np

# Bytes: TensorFlow uses a buffer aligned to this in place (dlpack) and aborts on a less
# aligned one; numpy's own large arrays start 16 bytes into a page.
TENSOR_ALIGNMENT = 64

READ_CHUNK_BYTES = 16 << 20  # an .npz member is copied into its array this much at a time

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def aligned_empty(shape: tuple[int, ...], dtype="float32") -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a TENSOR_ALIGNMENT-byte
    boundary (TENSOR_ALIGNMENT spare bytes allocated)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    size = max(count, 1) * dtype.itemsize  # numpy may move an empty view's data pointer
    buffer = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TENSOR_ALIGNMENT
    return buffer[start:start + size].view(dtype)[:count].reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    """Whether TensorFlow can use `array`'s memory in place: C-contiguous and aligned."""
    return array.flags.c_contiguous and array.ctypes.data % TENSOR_ALIGNMENT == 0


def load_npz_aligned(path: str) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz file (as `np.savez` writes it), each read into an
    `aligned_empty` array READ_CHUNK_BYTES at a time: the peak memory is the arrays plus one
    chunk, where `np.load` would hold each array twice while aligning it. ValueError for an
    array of Python objects or in Fortran order (np.savez of a C array writes neither)."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                shape, fortran_order, dtype = _HEADER_READERS[version](stream)
                if fortran_order or dtype.hasobject:
                    raise ValueError(f"{path}: {member} is not a plain C-order array; "
                                     "write it again with np.savez")
                array = aligned_empty(shape, dtype)
                _read_into(stream, array.reshape(-1).view(np.uint8), f"{path}: {member}")
            arrays[member.removesuffix(".npy")] = array
    return arrays


def _read_into(stream, target: np.ndarray, name: str) -> None:
    """Fills the byte array `target` from `stream`; ValueError if the stream ends first."""
    filled = 0
    while filled < len(target):
        chunk = stream.read(min(READ_CHUNK_BYTES, len(target) - filled))
        if not chunk:
            raise ValueError(f"{name} ends after {filled} of {len(target)} bytes: the file is "
                             "truncated; run the step that writes it again")
        target[filled:filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
        filled += len(chunk)
