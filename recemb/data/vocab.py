"""Vocab: string id <-> dense index, with counts and min-count filtering.

Dense indices exist only inside a Vocab, and a Vocab is saved with every
artifact that uses them, so external ids stay strings end to end.
Index order is by descending count, ties by id, so index 0 is the most
frequent item and the order is reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from recemb.errors import DataValidationError
from recemb.io import atomic_path


class Vocab:
    """A frozen mapping between string ids and dense indices ``0..n-1``.

    Attributes:
        ids: ``[N]`` object array of string ids; ``ids[i]`` has index ``i``.
        counts: ``[N]`` int64 occurrence counts.
    """

    def __init__(self, ids: list[str] | np.ndarray, counts: list[int] | np.ndarray | None = None):
        ids = np.asarray(ids, dtype=object)
        self.ids = ids
        self.counts = np.zeros(len(ids), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
        if len(self.counts) != len(ids):
            raise ValueError(f"Vocab: {len(ids)} ids but {len(self.counts)} counts")
        self._frame = pl.DataFrame(
            {"id": pl.Series(ids.tolist(), dtype=pl.String), "index": np.arange(len(ids), dtype=np.int64)}
        )
        if self._frame["id"].is_duplicated().any():
            dup = self._frame.filter(pl.col("id").is_duplicated())["id"][0]
            raise DataValidationError(f"Vocab: id {dup!r} occurs twice; ids must be unique")
        self._lookup = dict(zip(ids.tolist(), range(len(ids))))

    @classmethod
    def from_ids(cls, ids: pl.Series | list[str], min_count: int = 1) -> Vocab:
        """Build from every occurrence of each id (e.g. ``events["item_id"]``).

        Ids seen fewer than ``min_count`` times are left out.
        """
        s = ids if isinstance(ids, pl.Series) else pl.Series("id", ids, dtype=pl.String)
        counts = (
            s.alias("id")
            .value_counts(name="count")
            .filter(pl.col("count") >= min_count)
            .sort(["count", "id"], descending=[True, False])
        )
        return cls(counts["id"].to_numpy().astype(object), counts["count"].to_numpy())

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._lookup

    def index(self, item_id: str) -> int:
        """Dense index of one id; ``KeyError`` naming the id if unknown."""
        try:
            return self._lookup[item_id]
        except KeyError:
            raise KeyError(f"unknown id {item_id!r} (not in this vocab of {len(self)} ids)") from None

    def lookup(self, ids: pl.Series | list[str], missing: int = -1) -> np.ndarray:
        """Vectorised id -> index; unknown ids map to ``missing``. Returns ``[len(ids)]`` int64."""
        s = ids if isinstance(ids, pl.Series) else pl.Series("id", ids, dtype=pl.String)
        joined = pl.DataFrame({"id": s.cast(pl.String)}).join(self._frame, on="id", how="left", maintain_order="left")
        return joined["index"].fill_null(missing).to_numpy().astype(np.int64)

    def rows(self, ids: Sequence[str], missing: int = -1) -> np.ndarray:
        """``[len(ids)]`` int64 indices of a short list of ids through the dict (no DataFrame join).

        The per-request path (a query's few recent items); :meth:`lookup` is the bulk one.
        """
        get = self._lookup.get
        return np.fromiter((get(i, missing) for i in ids), dtype=np.int64, count=len(ids))

    def to_frame(self) -> pl.DataFrame:
        """``id: str, index: i64, count: i64`` in index order."""
        return self._frame.with_columns(count=pl.Series(self.counts))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            self.to_frame().write_parquet(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        df = pl.read_parquet(path)
        if not {"id", "index", "count"} <= set(df.columns):
            raise DataValidationError(f"{path}: not a recemb vocab (needs columns id, index, count)")
        df = df.sort("index")
        if not (df["index"].to_numpy() == np.arange(df.height)).all():
            raise DataValidationError(f"{path}: vocab indices are not 0..{df.height - 1}")
        return cls(df["id"].to_numpy().astype(object), df["count"].to_numpy())
