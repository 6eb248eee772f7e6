"""Sessionization: group each user's events into sessions.

A source with explicit session ids (Yoochoose, the synthetic generator) keeps
them. Events without one are split per user at every inactivity gap longer
than ``gap_minutes`` (default 30, the usual web-analytics convention).
"""

from __future__ import annotations

import polars as pl

from recemb.errors import DataValidationError


def sessionize(events: pl.DataFrame, gap_minutes: float = 30.0) -> pl.DataFrame:
    """Fill null ``session_id`` values of canonical events by inactivity gap.

    Args:
        events: canonical events table (any row order).
        gap_minutes: a pause longer than this starts a new session.

    Returns:
        The same rows (sorted by user_id, ts, item_id) with every ``session_id``
        set; generated ids are ``"<user_id>:<n>"``, n counting from 0 per user.
        Rows that already had a session id keep it.
    """
    if gap_minutes <= 0:
        raise DataValidationError(f"sessionize: gap_minutes must be > 0, got {gap_minutes}")
    if "session_id" not in events.columns:
        events = events.with_columns(session_id=pl.lit(None, dtype=pl.String))
    missing = pl.col("session_id").is_null()
    gap = pl.duration(microseconds=int(gap_minutes * 60 * 1_000_000))
    events = events.sort(["user_id", "ts", "item_id"], maintain_order=True)
    # Among events that need a session, a new one starts at each user's first
    # event and after each pause longer than the gap.
    todo = events.filter(missing).with_columns(_new=(pl.col("ts").diff().over("user_id").fill_null(gap * 2) > gap))
    todo = todo.with_columns(
        session_id=pl.col("user_id")
        + pl.lit(":")
        + (pl.col("_new").cast(pl.Int64).cum_sum().over("user_id") - 1).cast(pl.String)
    ).drop("_new")
    return pl.concat([events.filter(~missing), todo]).sort(["user_id", "ts", "item_id"], maintain_order=True)
