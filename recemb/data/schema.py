"""Canonical tables (DESIGN.md §2) as polars schemas, checked on read and write.

Every source is converted once into these tables. Ids are strings end to
end; dense integer ids live only inside a :class:`recemb.data.vocab.Vocab`.

=============  ==============================================================
table          required columns (extra typed columns are allowed)
=============  ==============================================================
events         user_id: str, item_id: str, ts: datetime[us, UTC], event: str,
               weight: f32, session_id: str (nullable)
items          item_id: str, title: str, text: str, category: list[str],
               image_path: str (nullable, relative to the dataset root)
users          user_id: str
impressions    impression_id: str, user_id: str, ts: datetime[us, UTC],
               item_id: str, position: i32, clicked: bool
=============  ==============================================================

Two entry points: :func:`validate` checks a frame that claims to be canonical
(strict: exact dtypes), :func:`coerce` turns a loosely typed frame (ints for
ids, strings for timestamps) into a canonical one and says which row could
not be converted. Both raise :class:`DataValidationError` naming the source,
the column, the first bad row and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recemb.errors import DataValidationError
from recemb.io import atomic_path

TS = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    nullable: bool = False
    default: object = None  # filled by coerce() when the column is absent


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # rows must be unique on these columns (full row for events)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


EVENTS = TableSchema(
    "events",
    (
        Column("user_id", pl.String()),
        Column("item_id", pl.String()),
        Column("ts", TS),
        Column("event", pl.String(), default="click"),
        Column("weight", pl.Float32(), default=1.0),
        Column("session_id", pl.String(), nullable=True, default=None),
    ),
    key=("user_id", "item_id", "ts", "event", "session_id"),
)
ITEMS = TableSchema(
    "items",
    (
        Column("item_id", pl.String()),
        Column("title", pl.String(), default=""),
        Column("text", pl.String(), default=""),
        Column("category", pl.List(pl.String()), default=[]),
        Column("image_path", pl.String(), nullable=True, default=None),
    ),
    key=("item_id",),
)
USERS = TableSchema("users", (Column("user_id", pl.String()),), key=("user_id",))
IMPRESSIONS = TableSchema(
    "impressions",
    (
        Column("impression_id", pl.String()),
        Column("user_id", pl.String()),
        Column("ts", TS),
        Column("item_id", pl.String()),
        Column("position", pl.Int32()),
        Column("clicked", pl.Boolean()),
    ),
    key=("impression_id", "position"),
)
SCHEMAS: dict[str, TableSchema] = {s.name: s for s in (EVENTS, ITEMS, USERS, IMPRESSIONS)}


def _schema(table: str | TableSchema) -> TableSchema:
    if isinstance(table, TableSchema):
        return table
    try:
        return SCHEMAS[table]
    except KeyError:
        raise DataValidationError(f"unknown table kind {table!r}; expected one of {sorted(SCHEMAS)}") from None


def _first_row(mask: pl.Series) -> int:
    """Index of the first True in a boolean series."""
    return int(mask.arg_true()[0])


def _row_repr(df: pl.DataFrame, row: int) -> str:
    return str(df.row(row, named=True))


def validate(
    df: pl.DataFrame,
    table: str | TableSchema,
    source: str | os.PathLike = "<frame>",
    *,
    allow_empty: bool = False,
) -> pl.DataFrame:
    """Check that ``df`` is a canonical ``table``; return it unchanged.

    Raises:
        DataValidationError: on a missing column, a wrong dtype, a null in a
            non-nullable column, an empty table, or duplicate keys. The message
            names ``source``, the column and the first bad row.
    """
    schema = _schema(table)
    where = f"{source} ({schema.name} table)"
    missing = [c.name for c in schema.columns if c.name not in df.columns]
    if missing:
        raise DataValidationError(
            f"{where}: missing column(s) {missing}; it has {df.columns}. "
            f"Rename the source columns (a column mapping in the config does this) "
            f"or add them; required: {schema.names}"
        )
    for col in schema.columns:
        got = df.schema[col.name]
        if got != col.dtype:
            raise DataValidationError(
                f"{where}: column {col.name!r} has type {got}, expected {col.dtype}. "
                f"Convert it with recemb.data.schema.coerce() or fix the source"
            )
    if df.height == 0 and not allow_empty:
        raise DataValidationError(f"{where}: the table is empty; give a file with at least one row")
    for col in schema.columns:
        if not col.nullable:
            nulls = df[col.name].is_null()
            if nulls.any():
                row = _first_row(nulls)
                raise DataValidationError(
                    f"{where}: column {col.name!r} has {int(nulls.sum())} null value(s), "
                    f"first at row {row}: {_row_repr(df, row)}. Drop those rows or fill them"
                )
    if schema.name in ("events", "impressions"):
        nan_w = df["weight"].is_nan() if schema.name == "events" else None
        if nan_w is not None and nan_w.any():
            row = _first_row(nan_w)
            raise DataValidationError(f"{where}: column 'weight' is NaN at row {row}")
    dup = df.select(schema.key).is_duplicated()
    if dup.any():
        row = _first_row(dup)
        raise DataValidationError(
            f"{where}: {int(dup.sum())} rows share their key {list(schema.key)} with another "
            f"row, first at row {row}: {_row_repr(df, row)}. Remove the duplicates "
            f"(e.g. df.unique(subset={list(schema.key)}))"
        )
    return df


def _cast_column(df: pl.DataFrame, col: Column, where: str) -> pl.Series:
    s = df[col.name]
    if s.dtype == col.dtype:
        return s
    try:
        if col.dtype == TS:
            out = _to_timestamp(s)
        elif col.dtype == pl.String() and s.dtype.is_float():
            # 1.0 -> "1" rather than "1.0": ids that went through floats stay ids.
            out = s.cast(pl.Int64, strict=True).cast(pl.String)
        elif col.dtype == pl.Boolean() and s.dtype == pl.String():
            truth = {"1": True, "true": True, "0": False, "false": False}
            out = s.str.to_lowercase().replace_strict(truth, default=None, return_dtype=pl.Boolean)
            bad = out.is_null() & s.is_not_null()
            if bad.any():
                raise ValueError(f"value {s[_first_row(bad)]!r}")
        elif isinstance(col.dtype, pl.List) and s.dtype == pl.String():
            out = s.str.split("|")
        else:
            out = s.cast(col.dtype, strict=True)
    except (pl.exceptions.PolarsError, ValueError) as e:
        bad_row = _first_unconvertible(s, col.dtype)
        detail = f"first bad row {bad_row}: {s[bad_row]!r}" if bad_row is not None else str(e)
        raise DataValidationError(
            f"{where}: column {col.name!r} ({s.dtype}) cannot be converted to {col.dtype}; "
            f"{detail}. Fix or drop that row"
            + (" (timestamps: ISO 8601, or unix seconds as integers)" if col.dtype == TS else "")
        ) from None
    return out.alias(col.name)


def _first_unconvertible(s: pl.Series, dtype: pl.DataType) -> int | None:
    for i, v in enumerate(s.to_list()):
        if v is None:
            continue
        try:
            if dtype == TS:
                _to_timestamp(pl.Series([v]))
            else:
                pl.Series([v]).cast(dtype, strict=True)
        except (pl.exceptions.PolarsError, ValueError):
            return i
    return None


def _to_timestamp(s: pl.Series) -> pl.Series:
    """Unix seconds (int/float) or ISO 8601 strings -> datetime[us, UTC]."""
    if s.dtype.is_integer() or s.dtype.is_float():
        return (
            (s.cast(pl.Float64) * 1_000_000).round().cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        )
    if isinstance(s.dtype, pl.Datetime):
        out = s.cast(pl.Datetime("us", s.dtype.time_zone))
        return out.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else out.dt.convert_time_zone("UTC")
    if s.dtype == pl.String():
        parsed = s.str.to_datetime(time_unit="us", strict=True, time_zone="UTC")
        return parsed
    raise ValueError(f"unsupported timestamp type {s.dtype}")


def coerce(df: pl.DataFrame, table: str | TableSchema, source: str | os.PathLike = "<frame>") -> pl.DataFrame:
    """Convert a loosely typed frame into the canonical ``table`` and validate it.

    Absent optional columns get their defaults; present ones are cast
    (int ids -> str, unix seconds or ISO strings -> datetime[us, UTC],
    "a|b" strings -> list[str]). Canonical columns come first, extras follow.
    """
    schema = _schema(table)
    where = f"{source} ({schema.name} table)"
    cols: list[pl.Series] = []
    for col in schema.columns:
        if col.name in df.columns:
            cols.append(_cast_column(df, col, where))
        elif col.default is not None or col.nullable:
            cols.append(pl.Series(col.name, [col.default] * df.height, dtype=col.dtype))
        else:
            validate(df, schema, source)  # raises the missing-column error
    extras = [df[c] for c in df.columns if c not in schema.names]
    out = pl.DataFrame(cols + extras)
    return validate(out, schema, source)


def check_references(
    items: pl.DataFrame, other: pl.DataFrame, other_name: str, source: str | os.PathLike = "<dataset>"
) -> None:
    """Every ``item_id`` of ``other`` (events or impressions) must exist in ``items``."""
    unknown = ~other["item_id"].is_in(items["item_id"].implode())
    if unknown.any():
        row = _first_row(unknown)
        raise DataValidationError(
            f"{source}: {other_name} name {int(other.filter(unknown)['item_id'].n_unique())} "
            f"item id(s) that are not in the items table, first at row {row}: "
            f"item_id={other['item_id'][row]!r}. Add those items or drop the rows"
        )


def write_table(df: pl.DataFrame, path: str | os.PathLike, table: str | TableSchema) -> Path:
    """Validate ``df`` as ``table`` and write it to Parquet atomically."""
    path = Path(path)
    validate(df, table, path)
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression="zstd", statistics=True)
    return path


def read_table(path: str | os.PathLike, table: str | TableSchema) -> pl.DataFrame:
    """Read a canonical Parquet table and validate it."""
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: no such file; prepare the dataset first (recemb data prepare)")
    try:
        df = pl.read_parquet(path)
    except pl.exceptions.PolarsError as e:
        raise DataValidationError(f"{path}: not a readable Parquet file ({e}); re-run recemb data prepare") from None
    return validate(df, table, path)
