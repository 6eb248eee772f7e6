"""The sequence model's training windows on disk: prepared once by the job, loaded by each training process.

The ``train sequence`` job builds :class:`~recemb.models.sequence.fit.TrainingData`
from the events in a child process and writes it here, so that no training
process (in-process or a Ray Train worker) reads or holds the events: each
loads these compact arrays, about 5 bytes per event and 16 per window
(50M events: ~0.4 GB, where the events table alone is several GB)::

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
from pathlib import Path
from typing import Any

import numpy as np

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.io import atomic_dir, write_json
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.fit import TrainingData
from recemb.models.sequence.net import ItemCategories
from recemb.models.sequence.windows import Sequences, Windows

STORE_FORMAT = "recemb.sequence.windows/1"
WINDOW_KEYS = ("max_length", "gap_buckets", "item_categories")  # the settings that change the windows


def window_settings(config: SequenceConfig) -> dict[str, Any]:
    """The settings a store was cut with (another value of any of them needs a new store)."""
    return {k: getattr(config, k) for k in WINDOW_KEYS}


def write_window_store(root: str | Path, data: TrainingData, meta: dict[str, Any]) -> Path:
    """Write ``data`` to ``root`` (replaced atomically); ``meta`` joins ``store.json``."""
    seqs, windows = data.windows.seqs, data.windows
    if len(data.vocab) >= 2**31:
        raise DataValidationError(f"sequence window store: {len(data.vocab)} items do not fit int32 rows")
    gap_dtype = np.uint8 if int(seqs.gaps.max(initial=0)) < 256 else np.int32
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


def load_window_store(root: str | Path) -> TrainingData:
    """The :class:`TrainingData` of a store written by :func:`write_window_store` (arrays checked)."""
    root = Path(root)
    meta = read_store_meta(root)
    try:
        a = {name: np.load(root / f"{name}.npy", allow_pickle=False) for name in ("items", "gaps", "offsets")}
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
    if len(a["items"]) != len(a["gaps"]) or len(a["items"]) != meta["events"]:
        problems.append("items and gaps differ in length from store.json's event count")
    if len(starts) != len(lengths) or len(starts) != meta["windows"]:
        problems.append("starts and lengths differ in length from store.json's window count")
    elif len(starts) and (int((starts + lengths).max()) >= max(len(a["items"]), 1) or int(starts.min()) < 0):
        problems.append("a window reaches outside the items")
    if len(a["items"]) and int(a["items"].max()) >= len(vocab):
        problems.append("an item row outside the vocabulary")
    if problems:
        raise DataValidationError(f"{root}: a damaged sequence window store ({'; '.join(problems)}); re-run the job")
    seqs = Sequences(a["items"], a["gaps"], a["offsets"])
    windows = Windows(seqs, starts, lengths, int(meta["width"]))
    return TrainingData(vocab, windows, str(meta["digest"]), categories, float(meta["repeat_rate"]))
