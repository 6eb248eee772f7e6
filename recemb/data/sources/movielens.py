"""MovieLens 100K -> canonical tables, from the GroupLens files or RecBole's atomic files.

Two raw layouts are understood (the folder decides):

* GroupLens (``ml-100k.zip``): ``u.data`` (user \\t item \\t rating \\t unix
  seconds), ``u.item`` (``|``-separated, **latin-1**, 19 genre flags),
  ``u.user`` (user|age|gender|occupation|zip), ``u.genre``.
* RecBole (``recbole==1.2.1`` wheel, ``recbole/dataset_example/ml-100k/``):
  ``ml-100k.inter`` / ``.item`` / ``.user``, tab-separated with typed headers
  (``user_id:token``). Its titles carry no "(year)" suffix and its genres are
  space-separated; the events and users are the same as GroupLens'.

Output:

* events: one row per rating, ``event="rating"``, ``weight=1.0``, extra
  ``rating: Int8``; ordered by (ts, user_id), file order kept for ties.
* items: ``title``, ``text=""`` (or the TMDB overview with content),
  ``category`` = genre names, ``image_path``, extra ``year: Int16`` (null
  where the release date is missing, e.g. item 267).
* users: ``age: Int16``, ``gender``, ``occupation``, ``zip_code`` (strings).

Optional content (``ml-100k-content``): ``items.csv`` (1,746 rows for 1,682
ids; duplicates resolved by preferring a non-empty overview, then the most
votes, then file order) and ``posters/<id>.jpg``. With content, ``text`` is
the overview and ``image_path = "images/<id>.jpg"`` where a poster exists;
the caller copies the posters folder to ``images/`` of the prepared dataset.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recemb.data import schema
from recemb.data.dataset import Dataset
from recemb.data.sources.table import read_delimited
from recemb.errors import DataValidationError

# u.genre order; used when u.genre is absent (RecBole layout spells genres out).
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
IMAGES_DIR = "images"


def _ratings_to_events(df: pl.DataFrame) -> pl.DataFrame:
    """``[user_id: str, item_id: str, rating, ts: unix seconds]`` -> canonical events + ``rating``."""
    out = df.select(
        pl.col("user_id"),
        pl.col("item_id"),
        pl.col("ts"),
        pl.lit("rating").alias("event"),
        pl.lit(1.0, dtype=pl.Float32).alias("weight"),
        pl.lit(None, dtype=pl.String).alias("session_id"),
        pl.col("rating").cast(pl.Int8, strict=True),
    )
    return out


def _grouplens(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    data = read_delimited(
        folder / "u.data",
        separator="\t",
        has_header=False,
        new_columns=["user_id", "item_id", "rating", "ts"],
        schema_overrides={
            "user_id": pl.String(),
            "item_id": pl.String(),
            "rating": pl.Int64(),
            "ts": pl.Int64(),
        },
    )
    genre_path = folder / "u.genre"
    genres = list(GENRES)
    if genre_path.exists():
        g = read_delimited(
            genre_path,
            separator="|",
            has_header=False,
            new_columns=["name", "idx"],
            quote_char=None,
        )
        genres = g.drop_nulls().sort("idx")["name"].to_list()  # u.genre ends with a blank line
    item_cols = [
        "item_id",
        "title",
        "release_date",
        "video_release_date",
        "imdb_url",
        *[f"g{i}" for i in range(len(genres))],
    ]
    raw_items = read_delimited(
        folder / "u.item",
        separator="|",
        has_header=False,
        new_columns=item_cols,
        schema_overrides={c: pl.String() for c in item_cols[:5]},
        encoding="latin-1",  # u.item is not UTF-8 (e.g. "Misérables" is byte 0xE9)
        quote_char=None,
    )
    flags = [pl.when(pl.col(f"g{i}") == 1).then(pl.lit(name)) for i, name in enumerate(genres)]
    items = raw_items.select(
        "item_id",
        pl.col("title").fill_null(""),
        pl.concat_list(flags).list.drop_nulls().alias("category"),
        pl.col("release_date").str.extract(r"(\d{4})\s*$").cast(pl.Int16).alias("year"),
    )
    users = None
    if (folder / "u.user").exists():
        users = read_delimited(
            folder / "u.user",
            separator="|",
            has_header=False,
            new_columns=["user_id", "age", "gender", "occupation", "zip_code"],
            schema_overrides={
                "user_id": pl.String(),
                "age": pl.Int16(),
                "gender": pl.String(),
                "occupation": pl.String(),
                "zip_code": pl.String(),
            },
            quote_char=None,
        )
    return _ratings_to_events(data), items, users


def _recbole_header(path: Path) -> dict[str, pl.DataType]:
    """All columns as strings: RecBole's ``name:type`` headers are stripped afterwards."""
    return {c: pl.String() for c in read_delimited(path, separator="\t", quote_char=None).columns}


def _strip_types(df: pl.DataFrame) -> pl.DataFrame:
    return df.rename({c: c.split(":")[0] for c in df.columns})


def _recbole(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    def read(suffix: str) -> pl.DataFrame:
        path = folder / f"ml-100k.{suffix}"
        return _strip_types(
            read_delimited(path, separator="\t", quote_char=None, schema_overrides=_recbole_header(path))
        )

    inter = read("inter").select(
        "user_id",
        "item_id",
        pl.col("rating").cast(pl.Float64).cast(pl.Int64),
        pl.col("timestamp").cast(pl.Float64).cast(pl.Int64).alias("ts"),
    )
    items = read("item").select(
        "item_id",
        pl.col("movie_title").fill_null("").alias("title"),
        pl.col("class")
        .fill_null("")
        .str.split(" ")
        .list.eval(pl.element().filter(pl.element() != ""))
        .alias("category"),
        pl.col("release_year").cast(pl.Int16, strict=False).alias("year"),
    )
    users = None
    if (folder / "ml-100k.user").exists():
        users = read("user").select("user_id", pl.col("age").cast(pl.Int16), "gender", "occupation", "zip_code")
    return _ratings_to_events(inter), items, users


def read_content(content_dir: Path) -> tuple[pl.DataFrame, Path | None]:
    """``items.csv`` + ``posters/`` -> ``[item_id, text, image_path]`` (one row per id) and the posters dir.

    Duplicated ids keep the row with a non-empty overview, then most votes,
    then the first in the file (deterministic).
    """
    path = content_dir / "items.csv"
    raw = read_delimited(path, schema_overrides={"movie_id": pl.String()})
    for col in ("movie_id", "overview", "vote_count"):
        if col not in raw.columns:
            raise DataValidationError(f"{path}: missing column {col!r}; it has {raw.columns}")
    best = (
        raw.with_row_index("_row")
        .with_columns(
            (pl.col("overview").fill_null("").str.strip_chars() != "").alias("_has_text"),
            pl.col("vote_count").cast(pl.Float64).fill_null(-1.0).alias("_votes"),
        )
        .sort(["movie_id", "_has_text", "_votes", "_row"], descending=[False, True, True, False])
        .unique(subset="movie_id", keep="first", maintain_order=True)
    )
    posters = content_dir / "posters"
    have = {p.stem for p in posters.glob("*.jpg")} if posters.is_dir() else set()
    content = best.select(
        pl.col("movie_id").alias("item_id"),
        pl.col("overview").fill_null("").alias("text"),
    ).with_columns(
        pl.when(pl.col("item_id").is_in(sorted(have)))
        .then(pl.format(IMAGES_DIR + "/{}.jpg", pl.col("item_id")))
        .otherwise(None)
        .alias("image_path")
    )
    return content, (posters if have else None)


def read_movielens(folder: Path, content_dir: Path | None = None) -> tuple[Dataset, dict[str, Path]]:
    """Convert a raw ML-100K folder (GroupLens or RecBole layout) into a :class:`Dataset`.

    Returns the dataset and the extra files for ``write_dataset``
    (``{"images": posters dir}`` when content with posters is given).
    """
    if (folder / "u.data").exists():
        events, items, users, layout = *_grouplens(folder), "grouplens"
    elif (folder / "ml-100k.inter").exists():
        events, items, users, layout = *_recbole(folder), "recbole"
    else:
        raise DataValidationError(
            f"{folder}: neither u.data (GroupLens ml-100k.zip) nor ml-100k.inter (RecBole) found; "
            f"point --source at the unpacked ml-100k folder or run `recemb data fetch movielens-100k`"
        )
    events = schema.coerce(events, "events", folder / ("u.data" if layout == "grouplens" else "ml-100k.inter"))
    events = events.sort(["ts", "user_id"], maintain_order=True)
    extra: dict[str, Path] = {}
    meta: dict[str, object] = {"source": "movielens-100k", "layout": layout, "content": None}
    if content_dir is not None:
        content, posters = read_content(content_dir)
        items = items.join(content, on="item_id", how="left")
        meta["content"] = str(content_dir)
        meta["items_with_text"] = int((items["text"].fill_null("") != "").sum())
        meta["items_with_image"] = int(items["image_path"].is_not_null().sum())
        if posters is not None:
            extra[IMAGES_DIR] = posters
    items = schema.coerce(items, "items", folder)
    if users is not None:
        users = schema.coerce(users, "users", folder / "u.user")
    name = "ml-100k-content" if content_dir is not None else "movielens-100k"
    return Dataset(name=name, events=events, items=items, users=users, meta=meta), extra
