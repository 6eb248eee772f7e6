"""``NpyFile``: slices of a 1-D ``.npy`` array read from disk on demand, never mapped or loaded whole.

The jobs' input stores (the two-tower's examples, the sequence model's
windows) are read this way, so a training process's memory holds what it is
batching, not the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recemb.errors import DataValidationError


class NpyFile:
    """Slices of one ``.npy`` array read with ``np.fromfile`` (the file is never mapped).

    Attributes:
        path, dtype, shape: of the array.
        data_offset: where its data starts in the file (after the ``.npy`` header).
    """

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.data_offset = f.tell()
        if fortran or len(shape) != 1:
            raise DataValidationError(f"{path}: expected a 1-D C-order array; re-run the job that wrote it")
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        """``array[start:stop]`` as a fresh in-memory array."""
        start, stop = max(0, start), min(len(self), stop)
        count = max(0, stop - start)
        offset = self.data_offset + start * self.dtype.itemsize
        return np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset)

    def all(self) -> np.ndarray:
        return self.read(0, len(self))
