"""The sequence model's training windows on disk: prepared once by the job, loaded by each training process.

The ``train sequence`` job builds :class:`~recemb.models.sequence.fit.TrainingData`
from the events in a child process and writes it here, so that no training
process (in-process or a Ray Train worker) reads or holds the events: each
holds the window table (16 bytes a window) and reads each batch's items
from the files as it builds the batch (:class:`SequenceFiles`)::

    <store>/
      items.npy, gaps.npy, offsets.npy      the sessions (CSR): item rows int32, gap buckets uint8
      starts.npy, lengths.npy               the windows: spans of items.npy (int64)
      category_{offsets,values}.npy         with item_categories: every item's categories (CSR)
      items.parquet                         the item Vocab
      store.json                            format, counts, events sha256, the settings it was cut with,
                                            the data digest (checkpoints resume on it), repeat rate
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.io import atomic_dir, write_json
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.fit import TrainingData
from recemb.models.sequence.net import ItemCategories
from recemb.models.sequence.windows import Sequences, SpanSource, Windows
from recemb.npyfile import NpyFile

STORE_FORMAT = "recemb.sequence.windows/1"
CHECK_BLOCK = 1 << 22  # item rows read at a time when a store is checked on load
WINDOW_KEYS = ("max_length", "gap_buckets", "item_categories")  # the settings that change the windows


def window_settings(config: SequenceConfig) -> dict[str, Any]:
    """The settings a store was cut with (another value of any of them needs a new store)."""
    return {k: getattr(config, k) for k in WINDOW_KEYS}


def write_window_store(root: str | Path, data: TrainingData, meta: dict[str, Any]) -> Path:
    """Write ``data`` to ``root`` (replaced atomically); ``meta`` joins ``store.json``."""
    seqs, windows = data.windows.in_memory(), data.windows
    if len(data.vocab) >= 2**31:
        raise DataValidationError(f"sequence window store: {len(data.vocab)} items do not fit int32 rows")
    gap_dtype = np.uint8 if int(seqs.gaps.max(initial=0)) < 256 else np.int32
    if int(seqs.items.max(initial=0)) >= len(data.vocab) or int(seqs.items.min(initial=0)) < 0:
        raise DataValidationError("sequence window store: an item row outside the vocabulary")
    arrays = {
        "items": seqs.items.astype(np.int32),
        "gaps": seqs.gaps.astype(gap_dtype),
        "offsets": seqs.offsets.astype(np.int64),
        "starts": windows.starts.astype(np.int64),
        "lengths": windows.lengths.astype(np.int64),
    }
    if data.categories is not None:
        arrays |= {"category_offsets": data.categories.offsets, "category_values": data.categories.values}
    root = Path(root)
    with atomic_dir(root) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        data.vocab.save(tmp / "items.parquet")
        write_json(
            tmp / "store.json",
            {
                "format": STORE_FORMAT,
                "events": int(len(seqs.items)),
                "items": len(data.vocab),
                "windows": len(windows),
                "width": windows.width,
                "digest": data.digest,
                "repeat_rate": data.repeat_rate,
                "categories": None
                if data.categories is None
                else {"count": data.categories.count, "trained": data.categories.trained},
                **meta,
            },
        )
    return root


def read_store_meta(root: str | Path) -> dict[str, Any]:
    """``store.json`` of a window store; a clear error when it is missing or of another format."""
    path = Path(root) / "store.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataValidationError(f"{path}: no readable sequence window store ({e}); re-run the sequence job") from None
    if meta.get("format") != STORE_FORMAT:
        raise DataValidationError(f"{path}: format {meta.get('format')!r} is not {STORE_FORMAT!r}; re-run the job")
    return meta


class SequenceFiles:
    """The store's ``items.npy`` / ``gaps.npy``, read span by span with ``os.pread`` (never mapped, never
    loaded whole): a training process holds the windows it is batching, not the events."""

    def __init__(self, root: Path):
        self.items, self.gaps = NpyFile(root / "items.npy"), NpyFile(root / "gaps.npy")
        if len(self.items) != len(self.gaps):
            raise DataValidationError(f"{root}: items.npy and gaps.npy differ in length; re-run the sequence job")
        self._fds = {name: os.open(f.path, os.O_RDONLY) for name, f in (("items", self.items), ("gaps", self.gaps))}

    def __len__(self) -> int:
        return len(self.items)

    def spans(self, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(items, gaps, starts)``: the spans, concatenated, and where each starts in them."""
        stops = np.minimum(starts + lengths, len(self.items))
        out = []
        for name, f in (("items", self.items), ("gaps", self.gaps)):
            size, base = f.dtype.itemsize, f.data_offset
            parts = [os.pread(self._fds[name], int(b - a) * size, base + int(a) * size) for a, b in zip(starts, stops)]
            out.append(np.frombuffer(b"".join(parts), dtype=f.dtype))
        local = np.concatenate([[0], np.cumsum(stops - starts)[:-1]]).astype(np.int64)
        return out[0], out[1], local

    def __getstate__(self) -> dict:
        raise TypeError("SequenceFiles holds open files: pass the store's path to another process, not this")

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)


def load_window_store(root: str | Path, in_memory: bool = False) -> TrainingData:
    """The :class:`TrainingData` of a store written by :func:`write_window_store` (arrays checked).

    The windows read their items from the files as they are batched
    (:class:`SequenceFiles`); ``in_memory`` loads the items and gaps whole instead.
    """
    root = Path(root)
    meta = read_store_meta(root)
    try:
        files = SequenceFiles(root)
        starts, lengths = (np.load(root / f"{n}.npy", allow_pickle=False) for n in ("starts", "lengths"))
        vocab = Vocab.load(root / "items.parquet")
        categories = None
        if meta["categories"] is not None:
            categories = ItemCategories(
                np.load(root / "category_offsets.npy", allow_pickle=False),
                np.load(root / "category_values.npy", allow_pickle=False),
                int(meta["categories"]["count"]),
                int(meta["categories"]["trained"]),
            )
    except (OSError, ValueError, KeyError) as e:
        raise DataValidationError(f"{root}: a damaged sequence window store ({e}); re-run the sequence job") from None
    problems = []
    if len(files) != meta["events"]:
        problems.append("items.npy differs in length from store.json's event count")
    if len(starts) != len(lengths) or len(starts) != meta["windows"]:
        problems.append("starts and lengths differ in length from store.json's window count")
    elif len(starts) and (int((starts + lengths).max()) >= max(len(files), 1) or int(starts.min()) < 0):
        problems.append("a window reaches outside the items")
    if len(vocab) != meta["items"]:
        problems.append("items.parquet differs from store.json's item count")
    for lo in range(0, len(files), CHECK_BLOCK):  # one pass in blocks: a bad row would fail deep in training
        rows = files.items.read(lo, lo + CHECK_BLOCK)
        if int(rows.min()) < 0 or int(rows.max()) >= len(vocab):
            problems.append(f"items.npy holds item rows outside the {len(vocab)}-item vocabulary")
            break
    if problems:
        raise DataValidationError(f"{root}: a damaged sequence window store ({'; '.join(problems)}); re-run the job")
    seqs: SpanSource = files
    if in_memory:
        seqs = Sequences(files.items.all(), files.gaps.all(), np.load(root / "offsets.npy", allow_pickle=False))
    windows = Windows(seqs, starts, lengths, int(meta["width"]))
    return TrainingData(vocab, windows, str(meta["digest"]), categories, float(meta["repeat_rate"]))
