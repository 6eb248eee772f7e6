"""EmbeddingSet: the artifact every trainer emits (DESIGN.md §5, §8).

An EmbeddingSet is a directory holding exactly three files::

    ids.parquet     one string column ``id``; row i belongs to vector i
    vectors.npy     float32 ``[N, D]``, C order, loaded with mmap_mode="r"
    manifest.json   schema_version, kind, dim, metric, normalized, count,
                    config, metrics (training), code_version, dtype,
                    sha256 {file name: hex digest}

Other tools read it with numpy and pyarrow alone::

    ids = pyarrow.parquet.read_table(d / "ids.parquet").column("id").to_pylist()
    vectors = numpy.load(d / "vectors.npy", mmap_mode="r")

Like gensim's KeyedVectors, it holds vectors only, no training state, so
nothing downstream ever unpickles a model. :meth:`EmbeddingSet.load` checks
everything before trusting the files (missing files, schema version, shape,
dtype, checksums, duplicate ids, NaN/inf rows) and says how to fix each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recemb import __version__
from recemb.data.vocab import Vocab
from recemb.errors import RecembError
from recemb.io import atomic_dir, read_checked_manifest, sha256_file, write_json
from recemb.vectors import METRICS, l2_normalize

SCHEMA_VERSION = 1
IDS_FILE = "ids.parquet"
VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
# Rows checked for NaN/inf at a time: bounds memory on large mmap'ed sets.
_CHECK_ROWS = 1 << 16
_REEXPORT = "re-export it with this recemb version (rerun the training stage, or EmbeddingSet(...).save(dir))"


class EmbeddingSetError(RecembError):
    """An EmbeddingSet directory is missing, corrupt or of an unknown version."""


class EmbeddingSet:
    """String ids and their vectors, plus what made them.

    Attributes:
        ids: ``[N]`` object array of string ids; ``ids[i]`` owns ``vectors[i]``.
        vectors: ``[N, D]`` float32, C order (a read-only memmap after :meth:`load`).
        kind: what produced the vectors, e.g. ``"item2vec"``, ``"two_tower_items"``.
        metric: the similarity the vectors are meant for: cosine, dot or euclidean.
        normalized: True when every row has unit L2 norm.
        config: the resolved training config (JSON-ready), stored in the manifest.
        metrics: training metrics (JSON-ready), stored in the manifest.
    """

    def __init__(
        self,
        ids: list[str] | np.ndarray | pl.Series,
        vectors: np.ndarray,
        kind: str,
        metric: str = "cosine",
        normalized: bool = False,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        *,
        code_version: str | None = None,
        _where: str = "EmbeddingSet",
    ):
        if isinstance(ids, pl.Series):
            ids = ids.to_list()
        ids = np.asarray(ids, dtype=object)
        if ids.ndim != 1:
            raise EmbeddingSetError(f"{_where}: ids must be 1-D, got shape {ids.shape}")
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
            shape = getattr(vectors, "shape", None)
            raise EmbeddingSetError(f"{_where}: vectors must be a 2-D numpy array [N, D], got shape {shape}")
        if vectors.dtype != np.float32:
            # Only a copy for in-memory sets; load() rejects a wrong dtype on disk.
            vectors = vectors.astype(np.float32)
        if not vectors.flags.c_contiguous:
            vectors = np.ascontiguousarray(vectors)
        if len(ids) != vectors.shape[0]:
            raise EmbeddingSetError(
                f"{_where}: {len(ids)} ids but {vectors.shape[0]} vector rows; every id needs exactly one row"
            )
        if metric not in METRICS:
            raise EmbeddingSetError(f"{_where}: metric must be one of {METRICS}, got {metric!r}")
        if not isinstance(kind, str) or not kind:
            raise EmbeddingSetError(f"{_where}: kind must be a non-empty string such as 'item2vec'")
        _check_ids(ids, _where)
        self.ids = ids
        self.vectors = vectors
        self.kind = kind
        self.metric = metric
        self.normalized = bool(normalized)
        self.config = dict(config or {})
        self.metrics = dict(metrics or {})
        self.code_version = code_version or __version__
        self._vocab: Vocab | None = None

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __repr__(self) -> str:
        return f"EmbeddingSet(kind={self.kind!r}, count={len(self)}, dim={self.dim}, metric={self.metric!r})"

    def to_vocab(self) -> Vocab:
        """A :class:`Vocab` whose index i is row i of ``vectors`` (counts are zero)."""
        if self._vocab is None:
            self._vocab = Vocab(self.ids)
        return self._vocab

    def lookup(self, ids: list[str] | np.ndarray | pl.Series, missing: int = -1) -> np.ndarray:
        """Rows of ``ids`` as ``[len(ids)]`` int64; unknown ids map to ``missing``."""
        if isinstance(ids, np.ndarray):
            ids = pl.Series("id", ids.tolist(), dtype=pl.String)
        return self.to_vocab().lookup(ids, missing=missing)

    def vector(self, id: str) -> np.ndarray:
        """The ``[D]`` vector of one id; ``KeyError`` naming the id if unknown."""
        return self.vectors[self.to_vocab().index(id)]

    def unit_vectors(self) -> np.ndarray:
        """``[N, D]`` float32 copy with unit-norm rows (zero rows stay zero)."""
        return l2_normalize(np.asarray(self.vectors, dtype=np.float32))

    # -------------------------------------------------------------- save/load
    def manifest(self, sha256: dict[str, str]) -> dict[str, Any]:
        return _manifest(
            self.kind,
            self.dim,
            len(self),
            self.metric,
            self.normalized,
            self.config,
            self.metrics,
            self.code_version,
            sha256,
        )

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the three files to ``out_dir`` atomically (an old set there is replaced whole)."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            table = pa.table({"id": pa.array(self.ids.tolist(), type=pa.string())})
            pq.write_table(table, tmp / IDS_FILE)
            np.save(tmp / VECTORS_FILE, np.ascontiguousarray(self.vectors, dtype=np.float32))
            sha = {name: sha256_file(tmp / name) for name in (IDS_FILE, VECTORS_FILE)}
            write_json(tmp / MANIFEST_FILE, self.manifest(sha))
        return out_dir

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> EmbeddingSet:
        """Open a saved set; vectors are memory-mapped read-only.

        Always checked: the three files exist, the manifest parses and has a
        known ``schema_version``, ``vectors.npy`` is float32 ``[count, dim]``
        in C order, ``ids.parquet`` has one string column ``id`` with ``count``
        unique, non-null ids. With ``verify`` (default) also: sha256 of each
        file against the manifest and no NaN/inf in any vector (one pass over
        the file). Every failure raises :class:`EmbeddingSetError` naming the
        file and the fix.
        """
        path = Path(path)
        if not path.is_dir():
            raise EmbeddingSetError(
                f"{path}: no such EmbeddingSet directory; train a model first (e.g. `recemb train item2vec CONFIG`)"
            )
        for name in (MANIFEST_FILE, IDS_FILE, VECTORS_FILE):
            if not (path / name).is_file():
                raise EmbeddingSetError(
                    f"{path / name}: missing; an EmbeddingSet holds {IDS_FILE}, {VECTORS_FILE} and {MANIFEST_FILE}; "
                    f"{_REEXPORT}"
                )
        manifest = _read_manifest(path / MANIFEST_FILE)
        count, dim = manifest["count"], manifest["dim"]

        vec_path = path / VECTORS_FILE
        try:
            vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise EmbeddingSetError(f"{vec_path}: not a readable .npy file ({e}); {_REEXPORT}") from None
        if vectors.dtype != np.float32:
            raise EmbeddingSetError(f"{vec_path}: dtype is {vectors.dtype}, expected float32; {_REEXPORT}")
        if vectors.shape != (count, dim):
            raise EmbeddingSetError(
                f"{vec_path}: shape {vectors.shape} but {MANIFEST_FILE} says [count={count}, dim={dim}]; "
                f"the files do not belong together; {_REEXPORT}"
            )
        if not vectors.flags.c_contiguous:
            raise EmbeddingSetError(f"{vec_path}: stored in Fortran order, expected C order; {_REEXPORT}")

        ids_path = path / IDS_FILE
        try:
            table = pq.read_table(ids_path)
        except (pa.ArrowException, OSError) as e:
            raise EmbeddingSetError(f"{ids_path}: not a readable Parquet file ({e}); {_REEXPORT}") from None
        if table.column_names != ["id"] or not (
            pa.types.is_string(table.schema.field("id").type) or pa.types.is_large_string(table.schema.field("id").type)
        ):
            raise EmbeddingSetError(
                f"{ids_path}: expected exactly one string column 'id', got {table.schema}; {_REEXPORT}"
            )
        if table.num_rows != count:
            raise EmbeddingSetError(
                f"{ids_path}: {table.num_rows} ids but {MANIFEST_FILE} says count={count}; {_REEXPORT}"
            )
        ids = np.asarray(table.column("id").to_pylist(), dtype=object)

        if verify:
            for name in (IDS_FILE, VECTORS_FILE):
                want = manifest["sha256"].get(name)
                got = sha256_file(path / name)
                if want != got:
                    raise EmbeddingSetError(
                        f"{path / name}: sha256 {got[:12]}... does not match {MANIFEST_FILE} ({str(want)[:12]}...); "
                        f"the file was changed or truncated after export; {_REEXPORT}"
                    )
            _check_finite(vectors, str(vec_path))
        return cls(
            ids,
            vectors,
            kind=manifest["kind"],
            metric=manifest["metric"],
            normalized=manifest["normalized"],
            config=manifest.get("config"),
            metrics=manifest.get("metrics"),
            code_version=manifest.get("code_version"),
            _where=str(ids_path),
        )


def write_embedding_set_blocks(
    out_dir: str | os.PathLike,
    ids: pl.Series,
    dim: int,
    blocks: Iterable[np.ndarray],
    *,
    kind: str,
    metric: str = "cosine",
    normalized: bool = False,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write an EmbeddingSet whose ``[N, D]`` vectors arrive as row blocks, never all in memory.

    The files are the ones :meth:`EmbeddingSet.save` writes for the same ids
    and vectors (``ids`` a string Series of N unique ids, ``blocks`` float32
    ``[n_i, dim]`` summing to N rows in id order); ``out_dir`` is replaced
    atomically, and on any error (a wrong row count, a NaN row) nothing is.
    For outputs that grow with the data, e.g. millions of users' vectors.
    """
    out_dir = Path(out_dir)
    where = f"EmbeddingSet {out_dir}"
    _check_ids(ids, where)
    if metric not in METRICS:
        raise EmbeddingSetError(f"{where}: metric must be one of {METRICS}, got {metric!r}")
    with atomic_dir(out_dir) as tmp:
        pq.write_table(pa.table({"id": ids.to_arrow().cast(pa.string())}), tmp / IDS_FILE)
        rows = 0
        with open(tmp / VECTORS_FILE, "wb") as f:
            header = {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (len(ids), dim)}
            np.lib.format.write_array_header_1_0(f, header)
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=np.float32)
                if block.ndim != 2 or block.shape[1] != dim or rows + len(block) > len(ids):
                    raise EmbeddingSetError(f"{where}: a block of shape {block.shape} does not fit [{len(ids)}, {dim}]")
                _check_finite(block, where, first_row=rows)
                f.write(block.tobytes())
                rows += len(block)
        if rows != len(ids):
            raise EmbeddingSetError(f"{where}: {rows} vector rows for {len(ids)} ids; every id needs exactly one row")
        sha = {name: sha256_file(tmp / name) for name in (IDS_FILE, VECTORS_FILE)}
        manifest = _manifest(kind, dim, len(ids), metric, normalized, config, metrics, __version__, sha)
        write_json(tmp / MANIFEST_FILE, manifest)
    return out_dir


def find_embedding_sets(run_dir: str | os.PathLike) -> dict[str, Path]:
    """The item EmbeddingSets a run holds: ``{model: <run>/<model>/embeddings}``, sorted by name."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob(f"*/embeddings/{MANIFEST_FILE}"))
    return {p.parent.parent.name: p.parent for p in found}


def _manifest(
    kind: str,
    dim: int,
    count: int,
    metric: str,
    normalized: bool,
    config: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    code_version: str,
    sha256: dict[str, str],
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "dim": dim,
        "count": count,
        "dtype": "float32",
        "metric": metric,
        "normalized": bool(normalized),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "code_version": code_version,
        "sha256": sha256,
    }


def _check_ids(ids: np.ndarray | pl.Series, where: str) -> None:
    s = ids if isinstance(ids, pl.Series) else pl.Series("id", ids.tolist(), dtype=pl.String, strict=False)
    if s.dtype != pl.String:
        raise EmbeddingSetError(f"{where}: ids must be strings, got {s.dtype}")
    if s.null_count():
        row = int(s.is_null().arg_true()[0])
        raise EmbeddingSetError(f"{where}: id at row {row} is null or not a string; every id must be a string")
    dup = s.is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[0])
        raise EmbeddingSetError(
            f"{where}: id {s[row]!r} occurs more than once (first at row {row}); ids must be unique, one vector per id"
        )


def _check_finite(vectors: np.ndarray, where: str, first_row: int = 0) -> None:
    """Raise naming the first row (counted from ``first_row``) that holds NaN or inf."""
    for start in range(0, vectors.shape[0], _CHECK_ROWS):
        block = np.asarray(vectors[start : start + _CHECK_ROWS])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = first_row + start + int(np.flatnonzero(bad)[0])
            raise EmbeddingSetError(
                f"{where}: row {row} holds NaN or inf; the training run diverged (lower the learning rate) "
                "or the file is corrupt; retrain and re-export"
            )


_REQUIRED = {
    "schema_version": int,
    "kind": str,
    "dim": int,
    "count": int,
    "metric": str,
    "normalized": bool,
    "sha256": dict,
}


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = read_checked_manifest(
        path, EmbeddingSetError, _REEXPORT, schema_version=SCHEMA_VERSION, required=_REQUIRED
    )
    if manifest.get("dtype", "float32") != "float32":
        raise EmbeddingSetError(f"{path}: dtype {manifest['dtype']!r} is not float32; {_REEXPORT}")
    return manifest
