"""A prepared dataset: a directory of canonical Parquet tables plus ``dataset.json``.

Layout (every file written atomically, the directory swapped in whole)::

    <dir>/events.parquet        required
    <dir>/items.parquet         optional
    <dir>/users.parquet         optional
    <dir>/impressions.parquet   optional
    <dir>/dataset.json          name, source, counts, sha256 of each table
    <dir>/images/...            optional, referenced by items.image_path

Events may carry a ``split`` column ("train" / "test") when the source comes
with its own split (Yoochoose); the splitters in :mod:`recemb.data.splits`
honour it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recemb import __version__
from recemb.data import schema
from recemb.errors import DataValidationError
from recemb.io import atomic_dir, sha256_file, write_json

TABLES = ("events", "items", "users", "impressions")
META_FILE = "dataset.json"


@dataclass
class Dataset:
    """Canonical tables of one dataset, in memory."""

    name: str
    events: pl.DataFrame
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    impressions: pl.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # where image_path values are relative to

    def tables(self) -> dict[str, pl.DataFrame]:
        return {t: getattr(self, t) for t in TABLES if getattr(self, t) is not None}

    def validate(self) -> Dataset:
        """Check every table and that events/impressions only name known items."""
        for name, df in self.tables().items():
            schema.validate(df, name, f"{self.name}/{name}")
        if self.items is not None:
            schema.check_references(self.items, self.events, "events", self.name)
            if self.impressions is not None:
                schema.check_references(self.items, self.impressions, "impressions", self.name)
        return self

    def counts(self) -> dict[str, int]:
        ev = self.events
        out = {
            "events": ev.height,
            "users": ev["user_id"].n_unique(),
            "items": self.items.height if self.items is not None else ev["item_id"].n_unique(),
            "event_items": ev["item_id"].n_unique(),
            "sessions": ev["session_id"].drop_nulls().n_unique(),
        }
        if self.impressions is not None:
            imp = self.impressions
            out["impressions"] = imp["impression_id"].n_unique()
            out["impression_rows"] = imp.height
            out["clicks"] = int(imp["clicked"].sum())
        return out


def write_dataset(ds: Dataset, out_dir: str | os.PathLike, extra_files: dict[str, Path] | None = None) -> Path:
    """Validate ``ds`` and write it to ``out_dir`` atomically (old contents replaced whole).

    ``extra_files`` maps relative names to existing files or folders that are
    copied into the dataset (e.g. posters, so the prepared dataset stands alone).
    """
    ds.validate()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        files = {}
        for name, df in ds.tables().items():
            path = schema.write_table(df, tmp / f"{name}.parquet", name)
            files[path.name] = sha256_file(path)
        for rel, src in (extra_files or {}).items():
            if Path(src).is_dir():
                shutil.copytree(src, tmp / rel)
            else:
                shutil.copy2(src, tmp / rel)
        write_json(
            tmp / META_FILE,
            {**ds.meta, "name": ds.name, "counts": ds.counts(), "sha256": files, "recemb_version": __version__},
        )
    return out_dir


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate a prepared dataset directory."""
    path = Path(path)
    if not (path / "events.parquet").exists():
        raise DataValidationError(
            f"{path}: no events.parquet here; this is not a prepared dataset. "
            f"Create one with `recemb data prepare NAME --source DIR --out {path}` or `recemb data synth --out {path}`"
        )
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    tables = {t: schema.read_table(path / f"{t}.parquet", t) for t in TABLES if (path / f"{t}.parquet").exists()}
    return Dataset(name=meta.get("name", path.name), meta=meta, root=path, **tables).validate()


def events_digest(data_dir: str | os.PathLike) -> str:
    """sha256 of a prepared dataset's events file: a job's prepared inputs are reused only for the same events."""
    return sha256_file(Path(data_dir) / "events.parquet")
