"""MIND (Microsoft News Dataset) -> canonical tables.

Raw files (tab-separated, no header, no quoting)::

    behaviors.tsv  impression_id, user_id, time ("11/12/2019 2:14:46 PM"),
                   history ("N1 N2 ..." or empty), impressions ("N5-1 N6-0 ...")
    news.tsv       news_id, category, subcategory, title, abstract, url,
                   title_entities, abstract_entities

Output:

* events (``event="history"``): each user's click history, taken once per
  user (MIND repeats it in every impression of the user; if the copies ever
  differ, the one of the user's earliest impression wins and the number of
  such users is in ``meta``). The source gives no history timestamps, so
  position ``i`` of an ``n``-long history gets
  ``ts = (user's first impression time) - (n - i) seconds``: order is kept and
  every history event precedes every impression of that user.
* impressions: one row per shown item, ``position`` 0..m-1 in the listed
  order, ``clicked`` from the ``-1``/``-0`` suffix, ``ts`` = impression time
  (the file's local time, read as UTC: MIND does not state a zone).
* items: every row of news.tsv (``category = [category, subcategory]``,
  ``text`` = abstract, extra ``url``, ``has_content=True``) plus stub rows
  (empty title/text, no category, ``has_content=False``) for ids that occur
  only in histories or impressions.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recemb.data import schema
from recemb.data.dataset import Dataset
from recemb.data.sources.table import read_delimited
from recemb.errors import DataValidationError

BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
NEWS_COLUMNS = [
    "item_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def _read_behaviors(path: Path) -> pl.DataFrame:
    raw = read_delimited(
        path,
        separator="\t",
        has_header=False,
        new_columns=BEHAVIOR_COLUMNS,
        schema_overrides={c: pl.String() for c in BEHAVIOR_COLUMNS},
        quote_char=None,
    )
    ts = raw["time"].str.strptime(pl.Datetime("us"), TIME_FORMAT, strict=False)
    bad = ts.is_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise DataValidationError(
            f"{path}: column 'time' (3rd) cannot be parsed as {TIME_FORMAT!r} at row {row}: "
            f"{raw['time'][row]!r}. Fix or drop that line"
        )
    return raw.with_columns(ts.dt.replace_time_zone("UTC").alias("ts"))


def _history_events(beh: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """One history per user -> events; also the number of users whose copies differ."""
    per_user = (
        beh.sort(["ts", "impression_id"])
        .group_by("user_id", maintain_order=True)
        .agg(
            pl.col("ts").first().alias("first_ts"),
            pl.col("history").first(),
            pl.col("history").n_unique().alias("_copies"),
        )
    )
    differing = int((per_user["_copies"] > 1).sum())
    hist = per_user.with_columns(
        pl.col("history").fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    ).with_columns(pl.col("history").list.len().alias("n"))
    hist = hist.filter(pl.col("n") > 0).with_columns(pl.int_ranges(0, pl.col("n")).alias("pos"))
    ev = hist.explode(["history", "pos"]).select(
        "user_id",
        pl.col("history").alias("item_id"),
        (pl.col("first_ts") - pl.duration(seconds=pl.col("n") - pl.col("pos"))).alias("ts"),
        pl.lit("history").alias("event"),
        pl.lit(1.0, dtype=pl.Float32).alias("weight"),
        pl.lit(None, dtype=pl.String).alias("session_id"),
    )
    return ev, differing


def _impressions(beh: pl.DataFrame, path: Path) -> pl.DataFrame:
    """``"N5-1 N6-0"`` -> one row per shown item with position and clicked."""
    rows = (
        beh.with_row_index("_line")
        .with_columns(
            pl.col("impressions").fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
        )
        .with_columns(pl.int_ranges(0, pl.col("impressions").list.len()).alias("position"))
        .explode(["impressions", "position"])
    )
    parts = rows["impressions"].str.extract_groups(r"^(.+)-([01])$")
    bad = parts.struct.field("1").is_null()
    if bad.any():
        first = rows.filter(bad).row(0, named=True)
        raise DataValidationError(
            f"{path}: column 'impressions' (5th) at row {first['_line']} (impression "
            f"{first['impression_id']}) has token {first['impressions']!r}; expected NEWSID-1 or NEWSID-0"
        )
    return rows.select(
        "impression_id",
        "user_id",
        "ts",
        parts.struct.field("1").alias("item_id"),
        pl.col("position").cast(pl.Int32),
        (parts.struct.field("2") == "1").alias("clicked"),
    )


def _items(news_path: Path, seen: pl.Series) -> pl.DataFrame:
    news = read_delimited(
        news_path,
        separator="\t",
        has_header=False,
        new_columns=NEWS_COLUMNS,
        schema_overrides={c: pl.String() for c in NEWS_COLUMNS},
        quote_char=None,
    )
    known = news.select(
        "item_id",
        pl.col("title").fill_null(""),
        pl.col("abstract").fill_null("").alias("text"),
        pl.concat_list(pl.col("category").fill_null(""), pl.col("subcategory").fill_null(""))
        .list.eval(pl.element().filter(pl.element() != ""))
        .alias("category"),
        "url",
        pl.lit(True).alias("has_content"),
    )
    seen = seen.unique()
    stub_ids = seen.filter(~seen.is_in(known["item_id"].implode())).sort()
    stubs = pl.DataFrame({"item_id": stub_ids}).with_columns(
        pl.lit("").alias("title"),
        pl.lit("").alias("text"),
        pl.lit([], dtype=pl.List(pl.String)).alias("category"),
        pl.lit(None, dtype=pl.String).alias("url"),
        pl.lit(False).alias("has_content"),
    )
    return pl.concat([known, stubs])


def read_mind(folder: Path) -> tuple[Dataset, dict[str, Path]]:
    """Convert a MIND folder (behaviors.tsv + news.tsv) into a :class:`Dataset`."""
    beh_path, news_path = folder / "behaviors.tsv", folder / "news.tsv"
    for p in (beh_path, news_path):
        if not p.exists():
            raise DataValidationError(
                f"{folder}: {p.name} not found; point --source at an unpacked MIND folder "
                f"(MINDsmall_train/) or run `recemb data fetch mind`"
            )
    beh = _read_behaviors(beh_path)
    events, differing = _history_events(beh)
    impressions = schema.coerce(_impressions(beh, beh_path), "impressions", beh_path)
    events = schema.coerce(events, "events", beh_path).sort(["ts", "user_id"], maintain_order=True)
    items = _items(news_path, pl.concat([events["item_id"], impressions["item_id"]]))
    items = schema.coerce(items, "items", news_path)
    meta = {
        "source": "mind",
        "history_ts": "synthetic: user's first impression time minus (n - i) seconds",
        "users_with_differing_histories": differing,
        "news_rows": int(items["has_content"].sum()),
        "stub_items": int((~items["has_content"]).sum()),
    }
    return Dataset(name="mind", events=events, items=items, impressions=impressions, meta=meta), {}
