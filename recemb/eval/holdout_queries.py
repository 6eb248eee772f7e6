"""Holdout queries for scoring the candidate job offline (``candidates.holdout``).

A candidate run with ``holdout`` = ``ml`` or ``sess`` queries the train part
of that protocol's split instead of every user's whole history, and
:mod:`recemb.eval.candidates_eval` rebuilds the same split to find each key's
held-out target:

=======  ===============================================================
none     every user, history = all their events (production, no target)
ml       P-ML test users, history = their leave-last-out train part,
         validation item excluded; target = the test item
sess     P-SESS: one query per test-session prefix, key
         ``"<session_id>#<i>"``, history = items 0..i-1, no masking;
         target = item i
=======  ===============================================================

Every builder returns ``(queries, fit_events)`` as a
:data:`recemb.retrieval.candidates.QueryBuilder` does: ``queries`` has one row
per key, ``user_id: str, history: list[str] (oldest first), exclude: list[str],
target: str``, sorted by ``user_id``; popularity is counted on ``fit_events``.
"""

from __future__ import annotations

from functools import partial

import polars as pl

from recemb.data import splits
from recemb.data.sessions import sessionize
from recemb.errors import ConfigError, DataValidationError
from recemb.retrieval.candidates import QueryBuilder, history_lists, production_queries

HOLDOUTS = ("none", "ml", "sess")
_EMPTY = pl.lit([], dtype=pl.List(pl.String))


def _require_events(events: pl.DataFrame) -> None:
    if events.height == 0:
        raise DataValidationError("candidate generation: the events table is empty; prepare data first")


def ml_queries(events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """P-ML: each test user's leave-last-out train history; fit events = the train part."""
    _require_events(events)
    split = splits.leave_last_out(events)
    if split.test.height == 0:
        raise DataValidationError("holdout ml: no user has 3 or more events, so no test item")
    q = (
        split.test.select("user_id", pl.col("item_id").alias("target"))
        .join(history_lists(split.train), on="user_id", how="left")
        .join(
            split.validation.select("user_id", pl.concat_list("item_id").alias("exclude")),
            on="user_id",
            how="left",
        )
        .with_columns(pl.col("history").fill_null(_EMPTY), pl.col("exclude").fill_null(_EMPTY))
    )
    return q.select("user_id", "history", "exclude", "target").sort("user_id"), split.train


def sess_queries(events: pl.DataFrame, gap_minutes: float = 30.0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """P-SESS: one query per test-session prefix; ``gap_minutes`` sessionizes events without session ids."""
    _require_events(events)
    ev = sessionize(events, gap_minutes) if events["session_id"].null_count() else events
    split = splits.session_split(ev)
    if split.test.height == 0:
        raise DataValidationError("holdout sess: no test session keeps >= 2 events on train items")
    # split.test is ordered by (session_id, ts, original order): a prefix is a list slice.
    q = (
        split.test.group_by("session_id", maintain_order=True)
        .agg(items=pl.col("item_id"))
        .with_columns(pos=pl.int_ranges(1, pl.col("items").list.len()))
        .explode("pos")
        .select(
            pl.format("{}#{}", "session_id", "pos").alias("user_id"),
            pl.col("items").list.slice(0, pl.col("pos")).alias("history"),
            _EMPTY.alias("exclude"),
            pl.col("items").list.get(pl.col("pos")).alias("target"),
        )
    )
    return q.sort("user_id"), split.train


def query_builder(holdout: str = "none", gap_minutes: float = 30.0) -> QueryBuilder:
    """The builder of ``holdout`` (module docstring) for ``generate_candidates(queries=...)``."""
    if holdout not in HOLDOUTS:
        raise ConfigError(f"candidates.holdout must be one of {HOLDOUTS}, got {holdout!r}")
    if holdout == "none":
        return production_queries
    return ml_queries if holdout == "ml" else partial(sess_queries, gap_minutes=gap_minutes)


def holdout_queries(
    events: pl.DataFrame, holdout: str = "none", gap_minutes: float = 30.0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(queries, fit_events)`` of ``holdout`` over ``events``: ``query_builder(holdout, gap_minutes)(events)``."""
    return query_builder(holdout, gap_minutes)(events)
