"""Turn canonical event tables into evaluation queries (:class:`QueryBatch` CSR).

A :class:`QuerySet` holds Q queries as *windows* into one item array:
query q is ``items[starts[q] : starts[q] + lengths[q]]``. Windows may overlap,
so all prefixes of a session cost no more memory than the session itself;
only the batch being scored is materialised as a :class:`QueryBatch`
(``O(sum of its query lengths)``).

Items are catalogue indices; items that are not in the catalogue are stored
as ``-1`` (so windows stay aligned with the source rows) and dropped when a
batch is materialised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recemb.data.splits import sort_keys
from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.eval.scorers import QueryBatch

HISTORY_ORDER = ("ts", "item_id")  # DESIGN.md §7, P-ML: order per user by (ts, item_id)


@dataclass(frozen=True)
class QuerySet:
    """Q queries as windows into one item array.

    Attributes:
        items: ``[T]`` int64 catalogue indices, ``-1`` = not in the catalogue.
        starts: ``[Q]`` int64 window starts into ``items``.
        lengths: ``[Q]`` int64 window lengths (0 = empty query).
        user_ids: ``[Q]`` object array of user/session ids, or None.
        ts: ``[T]`` float64 event times of ``items`` (seconds since the epoch), or None.
        at: ``[Q]`` float64 time of each query (seconds since the epoch), or None.
    """

    items: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    user_ids: np.ndarray | None = None
    ts: np.ndarray | None = None
    at: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, start: int, stop: int) -> QueryBatch:
        """Materialise queries ``start..stop-1`` as a :class:`QueryBatch` (unknown items dropped)."""
        starts = self.starts[start:stop]
        lengths = self.lengths[start:stop]
        b = len(starts)
        total = int(lengths.sum())
        # Position of every window element in `items`: start of its window plus
        # its offset inside the window (arange minus the window's first slot).
        first = np.cumsum(lengths) - lengths
        pos = np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)
        items = self.items[pos]
        rows = np.repeat(np.arange(b, dtype=np.int64), lengths)
        known = items >= 0
        items, rows = items[known], rows[known]
        offsets = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=b), out=offsets[1:])
        uids = None if self.user_ids is None else self.user_ids[start:stop]
        ts = None if self.ts is None else self.ts[pos][known]
        at = None if self.at is None else self.at[start:stop]
        return QueryBatch(items=items.astype(np.int64, copy=False), offsets=offsets, user_ids=uids, ts=ts, at=at)

    def batches(self, batch_size: int, first: int = 0, end: int | None = None) -> Iterator[tuple[int, int, QueryBatch]]:
        """Yield ``(start, stop, batch)`` over queries ``first..end-1`` in batches of at most ``batch_size``."""
        if batch_size < 1:
            raise DataValidationError(f"batch_size must be >= 1, got {batch_size}")
        end = len(self) if end is None else end
        for start in range(first, end, batch_size):
            stop = min(start + batch_size, end)
            yield start, stop, self.batch(start, stop)


def _seconds(ts: pl.Series) -> np.ndarray:
    """``[T]`` float64 seconds since the epoch of a datetime column."""
    return (ts.dt.epoch("ms").to_numpy() / 1000.0).astype(np.float64)


def _require_columns(events: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in events.columns]
    if missing:
        raise DataValidationError(
            f"{what}: events table lacks column(s) {missing}; it has {events.columns}. "
            "Pass canonical events (recemb.data.schema.coerce)"
        )


def user_histories(
    events: pl.DataFrame,
    catalogue: Vocab,
    user_ids: pl.Series | Sequence[str],
    order: Sequence[str] = HISTORY_ORDER,
    at: pl.Series | None = None,
) -> QuerySet:
    """One query per requested user: the user's events, oldest first.

    Args:
        events: canonical events (``user_id``, ``item_id`` and the ``order`` columns).
        catalogue: the item index space.
        user_ids: ``[Q]`` users, in the order the queries should have; a user
            with no events gets an empty query.
        order: sort keys inside a user's history (all-digit item ids compare
            as numbers, see :func:`sort_keys`); the sort is stable, so rows that
            tie on all keys keep their table order (``("ts",)`` keeps a listed
            order among equal timestamps).
        at: ``[Q]`` datetimes: the time of each query (e.g. an impression's), or None.

    Returns:
        QuerySet with ``items`` = all histories concatenated (catalogue indices,
        ``-1`` for unknown items) and one window per requested user.
    """
    _require_columns(events, ["user_id", "item_id", *order], "user_histories")
    users = pl.Series("user_id", list(user_ids) if not isinstance(user_ids, pl.Series) else user_ids, dtype=pl.String)
    hist = events.select("user_id", "item_id", *[c for c in order if c not in ("user_id", "item_id")])
    hist = hist.filter(pl.col("user_id").is_in(users.unique().implode()))
    hist = hist.sort([pl.col("user_id"), *sort_keys(hist, order)], maintain_order=True)
    items = catalogue.lookup(hist["item_id"])
    # Window of each user = its contiguous run in the sorted table.
    spans = (
        hist.with_row_index("_row")
        .group_by("user_id", maintain_order=True)
        .agg(start=pl.col("_row").first(), length=pl.len())
    )
    q = pl.DataFrame({"user_id": users}).join(spans, on="user_id", how="left", maintain_order="left")
    return QuerySet(
        items=items,
        starts=q["start"].fill_null(0).to_numpy().astype(np.int64),
        lengths=q["length"].fill_null(0).to_numpy().astype(np.int64),
        user_ids=users.to_numpy().astype(object),
        ts=_seconds(hist["ts"]) if "ts" in hist.columns else None,
        at=_seconds(at) if at is not None else None,
    )


def session_prefixes(events: pl.DataFrame, catalogue: Vocab) -> tuple[QuerySet, np.ndarray]:
    """All prefixes of all sessions (P-SESS): query = items 0..i-1, target = item i, i >= 1.

    Args:
        events: canonical events with ``session_id`` and ``ts``; sessions are
            ordered by ``ts``, ties kept in table order (stable sort), which is
            how :func:`recemb.data.splits.session_split` orders its test part.
        catalogue: the item index space (P-SESS: the train items).

    Returns:
        ``(queries, targets)``: ``queries`` has one window per (session,
        position i >= 1) pointing into the session's own rows, so the prefixes
        are never copied; ``targets`` is ``[Q]`` int64, ``-1`` where the target
        item is not in the catalogue (it then counts as a miss). A session of
        length L yields L - 1 queries; ``user_ids`` holds the session ids.
    """
    _require_columns(events, ["session_id", "item_id", "ts"], "session_prefixes")
    if events["session_id"].null_count():
        raise DataValidationError(
            "session_prefixes: some events have no session_id; run recemb.data.sessions.sessionize first"
        )
    ev = events.select("session_id", "item_id", "ts").sort(["session_id", "ts"], maintain_order=True)
    ev = ev.with_columns(_pos=pl.int_range(pl.len()).over("session_id"))
    items = catalogue.lookup(ev["item_id"])
    pos = ev["_pos"].to_numpy().astype(np.int64)
    # A query per row that is not a session's first: it is the target, and the
    # prefix is the pos rows before it.
    rows = np.flatnonzero(pos >= 1)
    queries = QuerySet(
        items=items,
        starts=rows - pos[rows],
        lengths=pos[rows],
        user_ids=ev["session_id"].to_numpy().astype(object)[rows],
        ts=_seconds(ev["ts"]),
    )
    return queries, items[rows]
