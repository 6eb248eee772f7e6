"""Repeat consumption: how often users come back to an item, and whether to exclude seen items.

Whether candidate lists may hold items of the user's own history is a
property of the data, not of a model: in e-commerce and news click logs a
third of next clicks can be re-clicks (Yoochoose: 34% repeat an item of the
session), in rating data none are (each user rates a film once). One setting,
``exclude_seen``, decides it for the evaluation harness (P-ML masking), the
candidate job and the online service alike, so that what production ships is
measured as it ships. Its default, ``"auto"``, excludes seen items when
repeats are rare:

    repeat_share = (events - distinct (user, item) pairs) / (events - users)

the share of events, after each user's first, on an item the user already
had. Above :data:`KEEP_SEEN_FROM` seen items stay rankable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from recemb.errors import ConfigError

if TYPE_CHECKING:  # the config sections import ExcludeSeen: no polars at config time
    import polars as pl

#: ``exclude_seen: auto`` keeps seen items when at least this share of events repeat one.
KEEP_SEEN_FROM = 0.05
ExcludeSeen = Literal["auto"] | bool


def repeat_share(events: pl.DataFrame | pl.LazyFrame) -> float:
    """Share of events (after each user's first) on an item the same user had before; 0 when none
    (also for events without users: a popularity-only log)."""
    import polars as pl

    lf = events.lazy()
    if not {"user_id", "item_id"} <= set(lf.collect_schema().names()):
        return 0.0
    row = lf.select(
        pl.len().alias("events"),
        pl.col("user_id").n_unique().alias("users"),
        pl.struct("user_id", "item_id").n_unique().alias("pairs"),
    ).collect()
    n, users, pairs = (int(row[c][0]) for c in ("events", "users", "pairs"))
    return (n - pairs) / (n - users) if n > users else 0.0


def resolve_exclude_seen(setting: ExcludeSeen, events: pl.DataFrame | pl.LazyFrame) -> bool:
    """``setting`` as a bool: ``"auto"`` -> ``repeat_share(events) < KEEP_SEEN_FROM``."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"exclude_seen must be true, false or 'auto', got {setting!r}")
    return repeat_share(events) < KEEP_SEEN_FROM
