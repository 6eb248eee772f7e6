"""Train/test splits of the evaluation protocols (DESIGN.md §7), in polars.

==========  =============================================================
protocol    split
==========  =============================================================
P-ML        :func:`leave_last_out` - per user, ordered by (ts, item_id)
            (all-digit ids as numbers, see :func:`sort_keys`):
            last event = test, second-to-last = validation, rest = train
P-SESS      :func:`session_split` - whole sessions to train or test (the
            source's own ``split`` column when it has one, else by session
            start time); test keeps only train items and sessions of >= 2
P-IMP       :func:`impression_split` - impressions split by time: earlier
            ones may train (and count clicks for popularity), later ones
            are evaluated
P-COLD      :func:`cold_item_split` - a random share of items is removed
            from training entirely; P-ML targets that are cold are kept
==========  =============================================================

Every split is a frozen dataclass of canonical tables, so any model can
train on ``split.train`` without knowing the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recemb.errors import DataValidationError

ORDER = ["user_id", "ts", "item_id"]


def sort_keys(events: pl.DataFrame, order: Sequence[str] = ORDER) -> list[pl.Expr]:
    """Sort expressions for ``order``, with all-digit ``item_id`` s ordered as numbers.

    Why: the reference figures of DESIGN.md §7 order ties on ``ts`` by the
    numeric item id, and ties are the rule, not the exception (76% of ML-100K
    ratings share their user and second with another rating). String order
    puts "10" before "9" and picks other test items (P-ML popularity
    Recall@20 0.103 instead of 0.080). Ordering all-digit ids by (length,
    string) is numeric order without parsing, so ids of any size work.
    """
    keys: list[pl.Expr] = []
    for col in order:
        if col == "item_id" and events.height and events["item_id"].str.contains(r"^\d+$").all():
            keys.append(pl.col("item_id").str.len_bytes())
        keys.append(pl.col(col))
    return keys


@dataclass(frozen=True)
class LeaveLastOutSplit:
    """P-ML. ``train``: canonical events; ``validation``/``test``: one event per user.

    Users with fewer than 3 events have all of them in ``train`` and no
    validation or test row.
    """

    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame


def leave_last_out(events: pl.DataFrame) -> LeaveLastOutSplit:
    """Split canonical events per user: last = test, second-to-last = validation."""
    _require_rows(events, "leave_last_out")
    ev = events.sort(sort_keys(events), maintain_order=True).with_columns(
        _from_end=(pl.len() - 1 - pl.int_range(pl.len())).over("user_id"),
        _n=pl.len().over("user_id"),
    )
    eligible = pl.col("_n") >= 3
    test = ev.filter(eligible & (pl.col("_from_end") == 0))
    validation = ev.filter(eligible & (pl.col("_from_end") == 1))
    train = ev.filter(~eligible | (pl.col("_from_end") >= 2))
    drop = ["_from_end", "_n"]
    return LeaveLastOutSplit(train.drop(drop), validation.drop(drop), test.drop(drop))


@dataclass(frozen=True)
class SessionSplit:
    """P-SESS. ``train``: events of train sessions; ``test``: events of test sessions.

    ``test`` holds only items that occur in ``train`` and only sessions left
    with at least 2 events, sorted by (session_id, ts, original order); every
    position i >= 1 of a test session is one query (prefix -> item i).
    """

    train: pl.DataFrame
    test: pl.DataFrame


def session_split(events: pl.DataFrame, test_fraction: float = 0.1) -> SessionSplit:
    """Split whole sessions into train and test.

    Uses the events' ``split`` column ("train"/"test") when present (sources
    with an official split, e.g. Yoochoose); otherwise the last
    ``test_fraction`` of sessions by start time are test.
    """
    _require_rows(events, "session_split")
    if events["session_id"].null_count():
        raise DataValidationError(
            "session_split: some events have no session_id; run recemb.data.sessions.sessionize first"
        )
    ev = events.with_row_index("_row")
    if "split" in ev.columns:
        bad = ~ev["split"].is_in(["train", "test"])
        if bad.any():
            row = int(bad.arg_true()[0])
            raise DataValidationError(
                f"session_split: column 'split' must be 'train' or 'test', row {row} has {ev['split'][row]!r}"
            )
        train, test = ev.filter(pl.col("split") == "train"), ev.filter(pl.col("split") == "test")
    else:
        if not 0 < test_fraction < 1:
            raise DataValidationError(f"session_split: test_fraction must be in (0, 1), got {test_fraction}")
        starts = ev.group_by("session_id").agg(start=pl.col("ts").min()).sort(["start", "session_id"])
        n_test = max(1, int(round(starts.height * test_fraction)))
        test_ids = starts["session_id"].tail(n_test)
        is_test = pl.col("session_id").is_in(test_ids.implode())
        train, test = ev.filter(~is_test), ev.filter(is_test)
    test = test.filter(pl.col("item_id").is_in(train["item_id"].unique().implode()))
    test = test.filter(pl.len().over("session_id") >= 2).sort(["session_id", "ts", "_row"])
    return SessionSplit(train.sort("_row").drop("_row"), test.drop("_row"))


@dataclass(frozen=True)
class ImpressionSplit:
    """P-IMP. ``history``: behaviour events; impressions split by time.

    ``train_impressions`` (earlier) may be used for training and to count
    clicks for the popularity baseline; ``test_impressions`` (later) are scored.
    """

    history: pl.DataFrame
    train_impressions: pl.DataFrame
    test_impressions: pl.DataFrame


def impression_split(events: pl.DataFrame, impressions: pl.DataFrame, test_fraction: float = 0.5) -> ImpressionSplit:
    """Split impressions by time: the latest ``test_fraction`` of impressions are test."""
    _require_rows(impressions, "impression_split")
    if not 0 < test_fraction < 1:
        raise DataValidationError(f"impression_split: test_fraction must be in (0, 1), got {test_fraction}")
    order = impressions.group_by("impression_id").agg(ts=pl.col("ts").min()).sort(["ts", "impression_id"])
    n_test = max(1, int(round(order.height * test_fraction)))
    test_ids = order["impression_id"].tail(n_test).implode()
    is_test = pl.col("impression_id").is_in(test_ids)
    return ImpressionSplit(
        history=events,
        train_impressions=impressions.filter(~is_test),
        test_impressions=impressions.filter(is_test),
    )


@dataclass(frozen=True)
class ColdItemSplit:
    """P-COLD. ``cold_items`` never occur in ``train``; ``test`` targets are cold items.

    Built on :func:`leave_last_out`: ``train`` is its train part without any
    event on a cold item, ``test`` its test rows whose item is cold.
    """

    cold_items: pl.Series
    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame


def cold_item_split(events: pl.DataFrame, fraction: float = 0.15, seed: int = 0, fold: int = 0) -> ColdItemSplit:
    """Hold out a random ``fraction`` of items (seeded) from training entirely.

    ``fold`` f takes the f-th block of ``fraction`` of one seeded permutation
    of the items, so folds 0, 1, ... hold out disjoint item sets; pooled over
    ``1 / fraction`` folds, every user's test item is cold exactly once.
    """
    if not 0 < fraction < 1:
        raise DataValidationError(f"cold_item_split: fraction must be in (0, 1), got {fraction}")
    items = np.sort(events["item_id"].unique().to_numpy().astype(str))
    size = max(1, int(round(len(items) * fraction)))
    if fold < 0 or (fold + 1) * size > len(items):
        raise DataValidationError(
            f"cold_item_split: fold {fold} of {size} items each does not fit in {len(items)} items; "
            f"use at most {len(items) // size} folds (eval.cold_folds x eval.cold_fraction <= 1)"
        )
    base = leave_last_out(events)
    perm = np.random.default_rng(seed).permutation(items)
    cold = pl.Series("item_id", perm[fold * size : (fold + 1) * size])
    is_cold = pl.col("item_id").is_in(cold.implode())
    return ColdItemSplit(
        cold_items=cold.sort(),
        train=base.train.filter(~is_cold),
        validation=base.validation.filter(~is_cold),
        test=base.test.filter(is_cold),
    )


def _require_rows(df: pl.DataFrame, what: str) -> None:
    if df.height == 0:
        raise DataValidationError(f"{what}: the table is empty; nothing to split")
