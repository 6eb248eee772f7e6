"""Yoochoose (RecSys Challenge 2015 clicks, session-rec's 100k sample) -> canonical tables.

Raw files (tab-separated, header ``SessionId ItemId Time``, Time = float unix
seconds with milliseconds)::

    yoochoose-clicks-100k_train_full.txt   required, split "train"
    yoochoose-clicks-100k_test.txt         optional, split "test"

(session-rec's ``train_tr``/``train_valid`` are a re-split of ``train_full``
and are not read.)

Output events: ``user_id = session_id = str(SessionId)`` (sessions are
anonymous), ``event="click"``, ``weight=1.0``, ``ts`` from ``Time``, extra
column ``split`` ("train"/"test") that keeps the source's split; ordered by
(ts, user_id) with file order kept for ties. Items: ids only. Exact duplicate
rows (same session, item and time to the millisecond) are dropped and
counted in ``meta["duplicates_dropped"]`` (train_full has one such pair).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recemb.data import schema
from recemb.data.dataset import Dataset
from recemb.data.sources.table import read_delimited
from recemb.errors import DataValidationError

PREFIX = "yoochoose-clicks-100k"
SPLITS = {"train": f"{PREFIX}_train_full.txt", "test": f"{PREFIX}_test.txt"}
RAW_COLUMNS = ["SessionId", "ItemId", "Time"]


def _read_split(path: Path, split: str) -> tuple[pl.DataFrame, int, int]:
    """One split file -> canonical events with ``split``; also (raw rows, duplicates dropped)."""
    raw = read_delimited(
        path,
        separator="\t",
        schema_overrides={"SessionId": pl.String(), "ItemId": pl.String(), "Time": pl.Float64()},
        quote_char=None,
    )
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing}; it has {raw.columns}. "
            f"Expected session-rec's tab-separated header 'SessionId ItemId Time'"
        )
    deduped = raw.unique(subset=RAW_COLUMNS, keep="first", maintain_order=True)
    events = deduped.select(
        pl.col("SessionId").alias("user_id"),
        pl.col("ItemId").alias("item_id"),
        pl.col("Time").alias("ts"),
        pl.lit("click").alias("event"),
        pl.lit(1.0, dtype=pl.Float32).alias("weight"),
        pl.col("SessionId").alias("session_id"),
        pl.lit(split).alias("split"),
    )
    return schema.coerce(events, "events", path), raw.height, raw.height - deduped.height


def read_yoochoose(folder: Path) -> tuple[Dataset, dict[str, Path]]:
    """Convert session-rec's Yoochoose 100k files in ``folder`` into a :class:`Dataset`."""
    if not (folder / SPLITS["train"]).exists():
        raise DataValidationError(
            f"{folder}: {SPLITS['train']} not found; point --source at the folder holding "
            f"session-rec's prepared rsc15 files or run `recemb data fetch yoochoose`"
        )
    parts, raw_counts, dropped = [], {}, {}
    for split, fname in SPLITS.items():
        if (folder / fname).exists():
            ev, raw_counts[split], dropped[split] = _read_split(folder / fname, split)
            parts.append(ev)
    events = pl.concat(parts).sort(["ts", "user_id"], maintain_order=True)
    # A session id in both files would silently merge two sessions into one user.
    if len(parts) == 2:
        shared = parts[0]["session_id"].unique().is_in(parts[1]["session_id"].unique().implode())
        if shared.any():
            raise DataValidationError(
                f"{folder}: {int(shared.sum())} session id(s) occur in both {SPLITS['train']} and "
                f"{SPLITS['test']}; the split must be by session"
            )
    items = schema.coerce(pl.DataFrame({"item_id": events["item_id"].unique().sort()}), "items", folder)
    meta = {
        "source": "yoochoose",
        "raw_rows": raw_counts,
        "duplicates_dropped": dropped,
        "splits": sorted(raw_counts),
    }
    return Dataset(name="yoochoose", events=events, items=items, meta=meta), {}
