"""Generic CSV / Parquet source, and the file-reading helpers every converter uses.

A :class:`recemb.data.config.TableSourceConfig` names one file per table (events
required; items, users, impressions optional) and, per table, a mapping
``canonical column -> source column``. Files ending in ``.parquet``/``.pq``
are read as Parquet, anything else as delimited text with ``separator``
(``.tsv`` files default to a tab when the separator is left at ``,``).
Columns are renamed, then :func:`recemb.data.schema.coerce` converts types
(int ids -> str, unix seconds / ISO strings -> datetime[us, UTC], ...).

Id columns (``user_id``, ``item_id``, ``session_id``, ``impression_id``) are
read as strings, so ``007`` stays ``007`` rather than becoming ``7``.
Without an items file, a stub items table (ids only) is built from the ids
that events and impressions name.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from recemb.data import schema
from recemb.data.config import TableSourceConfig
from recemb.data.dataset import Dataset
from recemb.errors import ConfigError, DataValidationError

ID_COLUMNS = ("user_id", "item_id", "session_id", "impression_id")
TABLE_KEYS = ("events", "items", "users", "impressions")


def read_delimited(
    path: Path,
    *,
    separator: str = ",",
    has_header: bool = True,
    new_columns: list[str] | None = None,
    schema_overrides: dict[str, pl.DataType] | None = None,
    encoding: str = "utf-8",
    quote_char: str | None = '"',
    n_rows: int | None = None,
) -> pl.DataFrame:
    """Read a delimited text file; any parse failure becomes a DataValidationError naming ``path``.

    ``encoding`` other than utf-8 (e.g. MovieLens' latin-1 ``u.item``) is
    decoded in Python first, since polars only reads UTF-8.
    """
    if not path.exists():
        raise DataValidationError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty; give a file with a header and at least one row")
    source: Path | io.BytesIO = path
    if encoding.lower().replace("-", "") not in ("utf8",):
        source = io.BytesIO(path.read_bytes().decode(encoding).encode("utf-8"))
    try:
        return pl.read_csv(
            source,
            separator=separator,
            has_header=has_header,
            new_columns=new_columns,
            schema_overrides=schema_overrides,
            quote_char=quote_char,
            infer_schema_length=10_000,
            n_rows=n_rows,
        )
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataValidationError(
            f"{path}: cannot be parsed as {'tab' if separator == chr(9) else repr(separator)}-separated "
            f"text ({first}). Check the separator, the header and the column types"
        ) from None


def _read_any(path: Path, separator: str, mapping: dict[str, str]) -> pl.DataFrame:
    """Read Parquet or delimited text by suffix; the (mapped) id columns of text files stay strings."""
    if path.suffix.lower() in (".parquet", ".pq"):
        if not path.exists():
            raise DataValidationError(f"{path}: no such file")
        try:
            return pl.read_parquet(path)
        except pl.exceptions.PolarsError as e:
            raise DataValidationError(f"{path}: not a readable Parquet file ({e})") from None
    if path.suffix.lower() == ".tsv" and separator == ",":
        separator = "\t"
    header = read_delimited(path, separator=separator, n_rows=0).columns
    id_sources = {mapping.get(c, c) for c in ID_COLUMNS}
    return read_delimited(
        path,
        separator=separator,
        schema_overrides={c: pl.String() for c in header if c in id_sources},
    )


def _rename(df: pl.DataFrame, mapping: dict[str, str], table: str, path: Path) -> pl.DataFrame:
    """Apply ``canonical -> source`` renames; name the file and columns on a bad mapping."""
    for dst, src in mapping.items():
        if src not in df.columns:
            raise DataValidationError(
                f"{path} ({table} table): the column mapping {dst} -> {src!r} names column {src!r}, "
                f"which the file does not have; it has {df.columns}. Fix data.table.columns.{table}.{dst}"
            )
        if dst in df.columns and dst != src and dst not in mapping.values():
            raise DataValidationError(
                f"{path} ({table} table): mapping {src!r} onto {dst!r} would clash with the file's own "
                f"column {dst!r}; drop or rename one of them"
            )
    return df.rename({src: dst for dst, src in mapping.items() if src != dst})


def _id_strings(df: pl.DataFrame) -> pl.DataFrame:
    """Cast id columns read as numbers (Parquet) to strings before coerce, keeping integer text."""
    return df.with_columns(
        pl.col(c).cast(pl.Int64).cast(pl.String) if df.schema[c].is_integer() else pl.col(c)
        for c in ID_COLUMNS
        if c in df.columns
    )


def _resolve(cfg: TableSourceConfig, table: str, base: Path | None) -> Path | None:
    rel = getattr(cfg, table)
    if rel is None:
        return None
    path = Path(rel)
    return base / path if base is not None and not path.is_absolute() else path


def _load_table(cfg: TableSourceConfig, table: str, path: Path | None) -> pl.DataFrame | None:
    if path is None:
        return None
    mapping = cfg.columns.get(table, {})
    df = _read_any(path, cfg.separator, mapping)
    df = _rename(df, mapping, table, path)
    return schema.coerce(_id_strings(df), table, path)


def read_table_source(cfg: TableSourceConfig, base: Path | None = None) -> Dataset:
    """Convert the files of a generic table source into a canonical :class:`Dataset`.

    Relative paths in ``cfg`` are resolved against ``base`` when given.

    Raises:
        ConfigError: ``columns`` names a table that does not exist.
        DataValidationError: unreadable/empty file, a mapping naming a missing
            column, a type that cannot be converted, null ids, duplicate rows,
            impressions or events naming item ids missing from the items file.
    """
    bad = sorted(set(cfg.columns) - set(TABLE_KEYS))
    if bad:
        raise ConfigError(f"data.table.columns: unknown table(s) {bad}; expected some of {list(TABLE_KEYS)}")
    paths = {t: _resolve(cfg, t, base) for t in TABLE_KEYS}
    tables = {t: _load_table(cfg, t, paths[t]) for t in TABLE_KEYS}
    events, items, impressions = tables["events"], tables["items"], tables["impressions"]
    events_path = paths["events"]
    if events is None or events_path is None:  # unreachable through TableSourceConfig, where events is required
        raise ConfigError("data.table.events: the events file is required")
    meta: dict[str, object] = {
        "source": "table",
        "files": {t: str(p) for t, p in paths.items() if p},
    }
    if items is not None:
        # Checked here (not only in Dataset.validate) so the message names the file.
        schema.check_references(items, events, "events", events_path)
        impressions_path = paths["impressions"]
        if impressions is not None and impressions_path is not None:  # a table is loaded only from a path
            schema.check_references(items, impressions, "impressions", impressions_path)
    else:
        ids = [events["item_id"]] + ([impressions["item_id"]] if impressions is not None else [])
        items = schema.coerce(pl.DataFrame({"item_id": pl.concat(ids).unique(maintain_order=True)}), "items")
        meta["items_table"] = "stub: ids named by events/impressions (no items file given)"
    events = events.sort(["ts", "user_id"], maintain_order=True)
    return Dataset(
        name="table",
        events=events,
        items=items,
        users=tables["users"],
        impressions=impressions,
        meta=meta,
    )
