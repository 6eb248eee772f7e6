"""Co-visitation: each item's top-M neighbours by co-occurrence, as a checked, memory-mapped artifact.

The similarity is the one of the item-kNN baselines (recemb.eval.baselines),
computed once here for both: the cosine over the binary unit x item incidence,
``cos(i, j) = C_ij / sqrt(C_ii C_jj)`` with ``C_ij`` the number of units (users
or sessions) holding both i and j. An item is its own best neighbour
(``cos(i, i) = 1``), which is how a co-visitation source scores repeat clicks.

A :class:`CoVisitTable` keeps the best ``top_m`` neighbours of each item, and a
co-visitation directory (``<run>/index/covisit/``, written by ``recemb export``)
holds it as::

    ids.parquet     one string column ``id``; row i = item i
    neighbors.npy   int32 ``[N, M]``, row i's neighbours best first, -1 = none
    weights.npy     float32 ``[N, M]``, their cosines (0 where neighbors is -1)
    manifest.json   schema_version, kind="covisit", count, top_m, unit, query,
                    pairs (stored neighbour pairs), events (rows counted),
                    sha256 {file: hex}, build_seconds, code_version

Scoring a history (:meth:`CoVisitTable.score`) sums ``w_j * cos(h_j, c)`` over
its items ``h_j`` and their stored neighbours ``c``, with the query weights of
:mod:`recemb.pooling` (``recency``: ``1 / (j + 1)``, most recent j = 0): the
``knn-recency`` baseline's ranking, truncated to each item's top M.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recemb import __version__
from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError, RecembError
from recemb.io import atomic_dir, load_checked_array, read_json_object, sha256_file, write_json
from recemb.pooling import QUERY_MODES, csr_weights
from recemb.retrieval.blend import best_first

SCHEMA_VERSION = 1
KIND = "covisit"
IDS_FILE, NEIGHBORS_FILE, WEIGHTS_FILE, MANIFEST_FILE = "ids.parquet", "neighbors.npy", "weights.npy", "manifest.json"
UNITS = ("auto", "user", "session")
_FIX = "rebuild it with `recemb export CONFIG`"


class CoVisitError(RecembError):
    """A co-visitation directory is missing, corrupt or does not belong together."""


def resolve_unit(events: pl.DataFrame, unit: str) -> str:
    """``auto`` -> ``session`` when every event has a ``session_id``, else ``user``."""
    if unit not in UNITS:
        raise DataValidationError(f"co-visitation unit must be one of {UNITS}, got {unit!r}")
    if unit != "auto":
        return unit
    has_sessions = "session_id" in events.columns and events.height and events["session_id"].null_count() == 0
    return "session" if has_sessions else "user"


def cosine_cooccurrence(events: pl.DataFrame, catalogue: Vocab, unit: str, who: str = "co-visitation") -> sp.csr_matrix:
    """``[N, N]`` float32 CSR cosine over the binary unit x item incidence of ``events``.

    Args:
        events: canonical events with ``item_id`` and ``<unit>_id`` (no nulls there).
        catalogue: fixes the item rows; events on other items are left out.
        unit: ``"user"`` or ``"session"``.
        who: names the caller in errors.
    """
    col = f"{unit}_id"
    for need in ("item_id", col):
        if need not in events.columns:
            raise DataValidationError(f"{who}: unit={unit!r} needs column {need!r}; the events have {events.columns}")
    if events[col].null_count():
        raise DataValidationError(
            f"{who}: column {col!r} has nulls; sessionize the events first "
            "(recemb.data.sessions.sessionize) or use unit='user'"
        )
    pairs = events.select(unit=pl.col(col), item_id=pl.col("item_id")).unique()
    items = catalogue.lookup(pairs["item_id"])
    keep = items >= 0
    units = pairs["unit"].rank("dense").to_numpy()[keep]
    items = items[keep]
    n = len(catalogue)
    _, unit_rows = np.unique(units, return_inverse=True)  # dense rows 0..U-1
    x = sp.csr_matrix(
        (np.ones(len(items), dtype=np.float32), (unit_rows, items)),
        shape=(int(unit_rows.max()) + 1 if len(items) else 0, n),
    )
    co = (x.T @ x).tocsr()  # [N, N] C_ij = units holding both
    diag = co.diagonal()
    inv = np.zeros(n, dtype=np.float64)
    inv[diag > 0] = 1.0 / np.sqrt(diag[diag > 0])
    d = sp.diags(inv)
    return (d @ co @ d).astype(np.float32).tocsr()


def top_m(sim: sp.csr_matrix, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbors int32 [N, m], weights float32 [N, m])``: each row's best m, ties by column; -1 / 0 pad."""
    n = sim.shape[0]
    sim = sim.tocsr()
    sim.eliminate_zeros()
    rows = np.repeat(np.arange(n), np.diff(sim.indptr))
    order = np.lexsort((sim.indices, -sim.data, rows))  # by row, best first, ties by column
    rank = np.arange(len(order)) - sim.indptr[rows[order]]
    keep = rank < m
    neighbors = np.full((n, m), -1, dtype=np.int32)
    weights = np.zeros((n, m), dtype=np.float32)
    sel = order[keep]
    neighbors[rows[sel], rank[keep]] = sim.indices[sel]
    weights[rows[sel], rank[keep]] = sim.data[sel]
    return neighbors, weights


class CoVisitTable:
    """Top-M co-visitation neighbours of N items (module docstring).

    Attributes:
        ids: ``[N]`` object array of item ids.
        neighbors: ``[N, M]`` int32 rows into ``ids``, best first, -1 = none.
        weights: ``[N, M]`` float32 cosines, 0 where ``neighbors`` is -1.
        unit: what co-occurrence counted (``user`` / ``session``).
        query: how a history's items are weighted (a :data:`recemb.pooling.QUERY_MODES` mode).
    """

    def __init__(
        self,
        ids: np.ndarray | list[str],
        neighbors: np.ndarray,
        weights: np.ndarray,
        unit: str,
        query: str = "recency",
        info: dict[str, Any] | None = None,
    ):
        self.ids = np.asarray(ids, dtype=object)
        self.neighbors, self.weights = neighbors, weights
        self.unit, self.query = unit, query
        self.info = dict(info or {})
        if query not in QUERY_MODES:
            raise CoVisitError(f"co-visitation query must be one of {QUERY_MODES}, got {query!r}")
        n = len(self.ids)
        if neighbors.ndim != 2 or neighbors.shape[0] != n or weights.shape != neighbors.shape:
            raise CoVisitError(
                f"co-visitation table: {n} ids, neighbors {neighbors.shape}, weights {weights.shape}; "
                "expected [N, M] twice"
            )
        self.item_row = {s: i for i, s in enumerate(self.ids.tolist())}
        if len(self.item_row) != n:
            raise CoVisitError("co-visitation table: duplicate item ids")
        self._known = np.r_[np.ones(n, dtype=bool), False]  # row N: unknown ids
        m = neighbors.shape[1]
        # The [N, N] top-M matrix shares the (memory-mapped) arrays; padding is column 0 with weight 0.
        indices = np.where(neighbors >= 0, neighbors, 0).astype(np.int32, copy=False).ravel()
        self.matrix = sp.csr_matrix(
            (np.asarray(weights, dtype=np.float32).ravel(), indices, np.arange(0, n * m + 1, m, dtype=np.int64)),
            shape=(n, n),
        )

    @property
    def top_m(self) -> int:
        return int(self.neighbors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, events: pl.DataFrame, unit: str = "auto", top: int = 100, query: str = "recency") -> CoVisitTable:
        """Count co-occurrence in ``events`` (every item with an event gets a row)."""
        if events.height == 0:
            raise DataValidationError("co-visitation: the events table is empty; prepare data first")
        if top < 1:
            raise DataValidationError(f"co-visitation top_m must be >= 1, got {top}")
        t0 = time.perf_counter()
        unit = resolve_unit(events, unit)
        catalogue = Vocab.from_ids(events["item_id"])
        sim = cosine_cooccurrence(events, catalogue, unit)
        neighbors, weights = top_m(sim, min(top, len(catalogue)))
        info = {
            "events": events.height,
            "pairs": int((neighbors >= 0).sum()),
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        return cls(catalogue.ids, neighbors, weights, unit, query, info)

    # ------------------------------------------------------------------ query
    def rows(self, histories: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """CSR batch ``(items [T], offsets [B + 1])`` of the histories; unknown ids -> row N."""
        get, unknown = self.item_row.get, len(self.ids)
        items = np.fromiter((get(x, unknown) for h in histories for x in h), dtype=np.int64)
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum([len(h) for h in histories], out=offsets[1:])
        return items, offsets

    def score(self, histories: list[list[str]], last_n: int = 1) -> sp.csr_matrix:
        """``[B, N]`` sparse scores: ``sum_j w_j cos(h_j, c)`` over the stored neighbours c.

        ``w_j`` follow ``self.query`` (``last_n`` is used by ``mean_last_n``); an
        item that occurs twice in a history counts twice, as in the baselines.
        """
        n = len(self.ids)
        items, offsets = self.rows(histories)
        w = csr_weights(items, offsets, self._known, self.query, last_n)
        rows = np.repeat(np.arange(len(histories)), np.diff(offsets))
        keep = w > 0
        q = sp.csr_matrix((w[keep], (rows[keep], items[keep])), shape=(len(histories), n))
        out = (q @ self.matrix).tocsr()
        out.eliminate_zeros()  # padding entries (weight 0) are no neighbours
        return out

    def search(self, histories: list[list[str]], want: np.ndarray) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per history, its best ``want[b]`` items ``(ids [<=want] object, scores float32)``; None if no item is known.

        Ties are broken by item row, so every call (batch or one request) agrees.
        """
        scores = self.score(histories)
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for b in range(len(histories)):
            lo, hi = scores.indptr[b], scores.indptr[b + 1]
            if lo == hi:
                out.append(None)
                continue
            cols, vals = best_first(scores.indices[lo:hi], scores.data[lo:hi], int(want[b]))
            out.append((self.ids[cols], vals.astype(np.float32)))
        return out

    # -------------------------------------------------------------- storage
    def manifest(self, sha256: dict[str, str]) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "count": len(self.ids),
            "top_m": self.top_m,
            "unit": self.unit,
            "query": self.query,
            "sha256": sha256,
            **self.info,
            "code_version": __version__,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Any]:
        """Write the directory atomically (an old one there is replaced whole); return the manifest."""
        with atomic_dir(out_dir) as tmp:
            pq.write_table(pa.table({"id": pa.array(self.ids.tolist(), type=pa.string())}), tmp / IDS_FILE)
            np.save(tmp / NEIGHBORS_FILE, np.ascontiguousarray(self.neighbors, dtype=np.int32))
            np.save(tmp / WEIGHTS_FILE, np.ascontiguousarray(self.weights, dtype=np.float32))
            manifest = self.manifest({f: sha256_file(tmp / f) for f in (IDS_FILE, NEIGHBORS_FILE, WEIGHTS_FILE)})
            write_json(tmp / MANIFEST_FILE, manifest)
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> CoVisitTable:
        """Open a saved table, arrays memory-mapped read-only; every defect raises :class:`CoVisitError`.

        Always checked: the files, the manifest (version, kind, counts), dtypes
        and shapes, ids unique and non-null. With ``verify`` also the sha256 of
        each file, neighbour rows inside ``[-1, N)`` and finite weights.
        """
        path = Path(path)
        m = read_manifest(path)
        n, top = m["count"], m["top_m"]
        arrays = {}
        for name, dtype in ((NEIGHBORS_FILE, np.int32), (WEIGHTS_FILE, np.float32)):
            arrays[name] = load_checked_array(
                path / name, dtype, (n, top), CoVisitError, _FIX, note=f" (a co-visitation directory holds {_FILES})"
            )
        try:
            table = pq.read_table(path / IDS_FILE)
        except (pa.ArrowException, OSError) as e:
            raise CoVisitError(f"{path / IDS_FILE}: not a readable Parquet file ({e}); {_FIX}") from None
        if table.column_names != ["id"] or table.num_rows != n or table.column("id").null_count:
            raise CoVisitError(
                f"{path / IDS_FILE}: expected {n} non-null ids in one column 'id', "
                f"got {table.num_rows} rows of {table.column_names}; {_FIX}"
            )
        if verify:
            for name in (IDS_FILE, NEIGHBORS_FILE, WEIGHTS_FILE):
                if sha256_file(path / name) != m["sha256"].get(name):
                    raise CoVisitError(
                        f"{path / name}: sha256 does not match {MANIFEST_FILE}; changed after export; {_FIX}"
                    )
            nb, w = arrays[NEIGHBORS_FILE], arrays[WEIGHTS_FILE]
            if nb.size and (int(nb.min()) < -1 or int(nb.max()) >= n):
                raise CoVisitError(f"{path / NEIGHBORS_FILE}: neighbour rows outside [-1, {n}); {_FIX}")
            if not np.isfinite(w).all():
                raise CoVisitError(f"{path / WEIGHTS_FILE}: NaN or inf weights; {_FIX}")
        ids = np.asarray(table.column("id").to_pylist(), dtype=object)
        info: dict[str, Any] = {k: m[k] for k in ("events", "pairs", "build_seconds") if k in m}
        try:
            return cls(ids, arrays[NEIGHBORS_FILE], arrays[WEIGHTS_FILE], m["unit"], m["query"], info)
        except CoVisitError as e:
            raise CoVisitError(f"{path}: {e}; {_FIX}") from None


_FILES = f"{IDS_FILE}, {NEIGHBORS_FILE}, {WEIGHTS_FILE} and {MANIFEST_FILE}"
_REQUIRED = {"kind": str, "count": int, "top_m": int, "unit": str, "query": str, "sha256": dict}


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``path/manifest.json`` of a co-visitation directory."""
    path = Path(path)
    f = path / MANIFEST_FILE
    if not f.is_file():
        raise CoVisitError(f"{f}: missing (a co-visitation directory holds {_FILES}); {_FIX}")
    m = read_json_object(f, CoVisitError, _FIX)
    if m.get("schema_version") != SCHEMA_VERSION:
        raise CoVisitError(
            f"{f}: schema_version {m.get('schema_version')!r}, this recemb reads {SCHEMA_VERSION}; {_FIX}"
        )
    for key, typ in _REQUIRED.items():
        v = m.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise CoVisitError(f"{f}: {key!r} must be a {typ.__name__}, got {v!r}; {_FIX}")
    if m["kind"] != KIND:
        raise CoVisitError(f"{f}: kind {m['kind']!r} is not {KIND!r}; {_FIX}")
    if m["count"] < 1 or m["top_m"] < 1 or m["unit"] not in ("user", "session"):
        raise CoVisitError(f"{f}: count and top_m must be >= 1 and unit user or session; {_FIX}")
    return m
