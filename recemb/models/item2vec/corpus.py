"""Training corpus of item2vec: sessions as CSR arrays over a Vocab.

A :class:`Corpus` holds every training session as a run of dense item
indices::

    indptr   [S + 1] int64   session s is indices[indptr[s]:indptr[s + 1]]
    indices  [E]     int32   item index into ``vocab`` (in time order)

What is left out, and why (each count is kept in ``Corpus.dropped``):

- events whose item occurs fewer than ``min_count`` times (as gensim does,
  the item is removed from the session and its neighbours close up);
- sessions left with fewer than 2 events (an empty or single-item session
  has no context, so it cannot produce a training pair);
- items whose every event was in such a session: they have no training
  occurrence, so they get no vector rather than a random one.

``vocab.counts`` are the training occurrences (events in the corpus), from
which the sub-sampling probabilities and the negative table are derived.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from recemb.data.sessions import sessionize
from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError

log = logging.getLogger("recemb.item2vec")

# Largest negative table: 100M int32 = 400 MB is word2vec.c's choice and the
# ceiling; 100 slots per item keep the quantisation error of rare items small.
_TABLE_MIN, _TABLE_PER_ITEM, _TABLE_MAX = 1_000_000, 100, 100_000_000


@dataclass(frozen=True)
class Corpus:
    """Sessions of dense item indices (CSR). See the module docstring."""

    vocab: Vocab
    indptr: np.ndarray
    indices: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_sessions(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_events(self) -> int:
        return len(self.indices)


def build_corpus(data: pl.DataFrame | list[list[str]], min_count: int = 1, gap_minutes: float = 30.0) -> Corpus:
    """Canonical events (or lists of item ids) -> :class:`Corpus`.

    Args:
        data: canonical events (``item_id``, ``ts``, ``session_id``; events
            without a session id are sessionized per user with ``gap_minutes``),
            or sessions as lists of string item ids, already in order.
        min_count: items with fewer events are removed (and counted in
            ``dropped["items_below_min_count"]``).

    Sessions are ordered by their first event's time (then id); events in a
    session by time, ties kept in input order.
    """
    if isinstance(data, pl.DataFrame):
        frame = _events_to_frame(data, gap_minutes)
        n_sessions = frame["session"].n_unique()
    elif isinstance(data, (list, tuple)):
        frame = _lists_to_frame(data)
        n_sessions = len(data)
    else:
        raise DataValidationError(
            f"item2vec: expected canonical events (polars DataFrame) or a list of sessions "
            f"(lists of item ids), got {type(data).__name__}"
        )
    return _frame_to_corpus(frame, min_count, n_sessions)


def _events_to_frame(events: pl.DataFrame, gap_minutes: float) -> pl.DataFrame:
    """Canonical events -> ``session: u32, item_id: str`` rows in training order."""
    missing = [c for c in ("item_id", "ts") if c not in events.columns]
    if missing:
        raise DataValidationError(
            f"item2vec: events lack column(s) {missing}; pass canonical events (recemb.data.schema)"
        )
    if events.height == 0:
        raise DataValidationError("item2vec: the events table is empty; nothing to train on")
    if events["item_id"].null_count():
        row = int(events["item_id"].is_null().arg_true()[0])
        raise DataValidationError(f"item2vec: column 'item_id' is null at row {row}; drop or fill such events")
    if "session_id" not in events.columns or events["session_id"].null_count():
        if "user_id" not in events.columns:
            raise DataValidationError(
                "item2vec: events have no session_id and no user_id to sessionize by; add one of them"
            )
        events = sessionize(events, gap_minutes)
    ev = events.select("session_id", "item_id", "ts").with_row_index("_row")
    ev = ev.with_columns(_start=pl.col("ts").min().over("session_id")).sort(["_start", "session_id", "ts", "_row"])
    return ev.select(session=pl.col("session_id").rle_id(), item_id=pl.col("item_id").cast(pl.String))


def _lists_to_frame(sessions: list[list[str]] | tuple) -> pl.DataFrame:
    """Lists of item ids -> ``session: u32, item_id: str`` rows, order kept."""
    if len(sessions) == 0:
        raise DataValidationError("item2vec: the list of sessions is empty; nothing to train on")
    if isinstance(sessions[0], str):
        raise DataValidationError(
            f"item2vec: sessions must be lists of item ids, got a string {sessions[0]!r}; "
            "wrap each session in a list, e.g. [['a', 'b'], ['c']]"
        )
    try:
        lengths = np.fromiter(map(len, sessions), dtype=np.int64, count=len(sessions))
        # One flat list (C-speed chain) converts far faster than a polars List column.
        flat = pl.Series("item_id", list(itertools.chain.from_iterable(sessions)), dtype=pl.String, strict=True)
    except (TypeError, pl.exceptions.PolarsError) as e:
        raise DataValidationError(
            f"item2vec: sessions must be lists of string item ids, e.g. [['a', 'b'], ['c', 'a']] ({e})"
        ) from None
    session = np.repeat(np.arange(len(sessions), dtype=np.uint32), lengths)
    return pl.DataFrame({"session": session, "item_id": flat})


def _frame_to_corpus(frame: pl.DataFrame, min_count: int, n_sessions_in: int) -> Corpus:
    if min_count < 1:
        raise DataValidationError(f"item2vec: min_count must be >= 1, got {min_count}")
    n_items_seen = frame["item_id"].n_unique()
    n_events_in = frame.height
    frequent = Vocab.from_ids(frame["item_id"], min_count=min_count)
    kept = frame.filter(pl.col("item_id").is_in(pl.Series(frequent.ids.tolist(), dtype=pl.String).implode()))
    kept = kept.filter(pl.len().over("session") >= 2)
    if kept.height == 0:
        raise DataValidationError(
            f"item2vec: no session has 2 or more events on items seen >= min_count={min_count} times "
            f"({n_events_in} events, {n_sessions_in} sessions, {n_items_seen} items); "
            "lower min_count or check that session_id groups related events"
        )
    vocab = Vocab.from_ids(kept["item_id"])
    indices = vocab.lookup(kept["item_id"]).astype(np.int32)
    lengths = kept["session"].rle().struct.field("len").to_numpy()
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    dropped = {
        "items_below_min_count": n_items_seen - len(frequent),
        "items_only_in_short_sessions": len(frequent) - len(vocab),
        "events": n_events_in - kept.height,
        "sessions": n_sessions_in - len(lengths),
    }
    if dropped["items_below_min_count"] or dropped["items_only_in_short_sessions"]:
        log.info(
            "item2vec corpus: %d of %d items get no vector (%d seen < min_count=%d times, "
            "%d only in sessions of length < 2)",
            n_items_seen - len(vocab),
            n_items_seen,
            dropped["items_below_min_count"],
            min_count,
            dropped["items_only_in_short_sessions"],
        )
    return Corpus(vocab=vocab, indptr=indptr, indices=indices, dropped=dropped)


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each occurrence of an item, ``[V]`` float32.

    word2vec's sub-sampling rule (as in gensim): with ``t = sample * total``,
    ``keep = (sqrt(c / t) + 1) * t / c``, capped at 1. ``sample = 0`` keeps all.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1.0) * threshold / np.maximum(counts, 1.0)
    return np.minimum(keep, 1.0).astype(np.float32)


def negative_table(counts: np.ndarray, ns_exponent: float, size: int | None = None) -> np.ndarray:
    """Lookup table for drawing negatives: item i fills a share ``count_i**ns_exponent / Z``.

    A uniform draw from the ``[size]`` int32 table is a draw from the
    unigram**ns_exponent distribution in O(1). ``ns_exponent`` may be 0
    (uniform) or negative (rare items drawn more often). Slots are assigned
    by quantile, so every item with share >= 1/size gets at least one slot.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) == 0 or (counts <= 0).any():
        raise DataValidationError("negative_table: counts must be positive (build it from a Corpus vocab)")
    if size is None:
        size = int(np.clip(_TABLE_PER_ITEM * len(counts), _TABLE_MIN, _TABLE_MAX))
    # Work in log space so large negative exponents do not overflow.
    logw = ns_exponent * np.log(counts)
    weights = np.exp(logw - logw.max())
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    points = (np.arange(size, dtype=np.float64) + 0.5) / size
    table = np.searchsorted(cdf, points, side="right")
    return np.minimum(table, len(counts) - 1).astype(np.int32)
