"""HNSW-backed approximate index (hnswlib): fast at a million items, and mutable while it serves.

Annoy's forest is fixed once built and needs ~4x exact search's cost for recall 0.95 at
1M x 64 (docs/candidates.md); a navigable small-world graph reaches it at tens of times
exact's speed, and it can do three things a forest never will:

- :meth:`HnswIndex.add`: new rows appended to a live index (row ``N, N+1, ...``): a cold
  item's content vector is searchable at once, no rebuild.
- :meth:`HnswIndex.remove`: rows marked deleted, never returned again (the graph keeps
  routing through them).
- per-query exclusion inside the search (:meth:`HnswIndex.search`'s ``exclude``): a
  user's seen or blocked items are skipped while the graph is walked, so the search need
  not fetch ``k + |seen|`` results to keep ``k``.

hnswlib checks little on load: it walks the file's link lists, but takes the vector
size from the caller, so a file of another dimension is read out of bounds.
:func:`check_hnsw_file` reads the 96-byte header first and checks it against the
manifest (:mod:`recemb.index.hnsw_export` calls it before hnswlib sees the file).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import hnswlib
import numpy as np

from recemb.index.base import Index, RecembIndexError, check_vectors

#: recemb metric -> hnswlib space. hnswlib returns distances: cosine/ip 1 - q.x, l2 |q - x|^2.
HNSW_SPACE = {"cosine": "cosine", "dot": "ip", "euclidean": "l2"}

# hnswlib's saveIndex header (hnswalg.h): six size_t, int maxlevel, uint enterpoint,
# three size_t (maxM, maxM0, M), double mult, size_t ef_construction: 96 bytes.
HEADER = np.dtype(
    [
        ("offset_level0", "<u8"),
        ("max_elements", "<u8"),
        ("count", "<u8"),
        ("bytes_per_element", "<u8"),
        ("label_offset", "<u8"),
        ("offset_data", "<u8"),
        ("max_level", "<i4"),
        ("entry_point", "<u4"),
        ("max_m", "<u8"),
        ("max_m0", "<u8"),
        ("m", "<u8"),
        ("mult", "<f8"),
        ("ef_construction", "<u8"),
    ]
)


def element_bytes(dim: int, m: int) -> int:
    """Bytes of one element in hnswlib's level 0: ``2M`` uint32 links + a count, the vector, a uint64 label."""
    return (2 * m * 4 + 4) + 4 * dim + 8


class HnswIndex(Index):
    """Approximate top-k over an HNSW graph (module docstring).

    Args:
        metric: cosine, dot or euclidean.
        m: graph degree (hnswlib ``M``); level 0 keeps ``2m`` links per element.
        ef_construction: candidate list while building: higher = better graph, slower build.
        ef_factor: search breadth per result: a query for k walks with ``ef = ceil(ef_factor * k)``
            (at least k). A recall-certified export records the cheapest that meets its target.
        threads: threads for a batch search (and for :meth:`build`, all cores when -1).
        seed: hnswlib's level-assignment seed.
    """

    is_exact = False
    filters_inside = True

    def __init__(
        self,
        metric: str = "cosine",
        m: int = 16,
        ef_construction: int = 100,
        ef_factor: float = 4.0,
        threads: int = 1,
        seed: int = 0,
    ):
        super().__init__(metric)
        if m < 2 or ef_construction < 1 or ef_factor <= 0:
            raise RecembIndexError(
                f"need m >= 2, ef_construction >= 1, ef_factor > 0; got {m}, {ef_construction}, {ef_factor}"
            )
        self.m, self.ef_construction, self.ef_factor = int(m), int(ef_construction), float(ef_factor)
        self.threads, self.seed = int(threads), int(seed)
        self._hnsw: hnswlib.Index | None = None
        self._deleted: set[int] = set()
        self._lock = threading.Lock()  # resize_index must not run beside a search or another add

    def ef(self, k: int) -> int:
        """The search breadth for ``k`` results."""
        return max(int(k), math.ceil(self.ef_factor * k))

    def effort(self, k: int) -> dict[str, int]:
        """What one query for ``k`` costs in this index's own terms (recorded by certification)."""
        return {"ef": self.ef(k)}

    @property
    def deleted(self) -> frozenset[int]:
        """Rows removed with :meth:`remove` (still counted in :attr:`count`: rows are never reused)."""
        return frozenset(self._deleted)

    def build(self, vectors: np.ndarray) -> HnswIndex:
        """Index ``vectors [N, D]`` (row i = label i), with ``threads`` build threads."""
        x = check_vectors(vectors, "HnswIndex.build")
        n, d = x.shape
        h = hnswlib.Index(space=HNSW_SPACE[self.metric], dim=int(d))
        h.init_index(max_elements=max(n, 1), M=self.m, ef_construction=self.ef_construction, random_seed=self.seed)
        h.set_num_threads((os.cpu_count() or 1) if self.threads == -1 else max(1, self.threads))
        for start in range(0, n, 262144):  # a memmap is paged in block by block
            block = np.ascontiguousarray(x[start : start + 262144], dtype=np.float32)
            h.add_items(block, np.arange(start, start + len(block)))
        self._hnsw, self._count, self._dim, self._deleted = h, int(n), int(d), set()
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph (with its deletion marks) to ``path``."""
        self._require().save_index(str(path))

    @classmethod
    def open(
        cls, path: str | os.PathLike, dim: int, count: int, metric: str, m: int, ef_factor: float, threads: int = 1
    ) -> HnswIndex:
        """Load an hnswlib file. UNSAFE on an unchecked file: use :func:`recemb.index.hnsw_export.load_hnsw_index`."""
        self = cls(metric=metric, m=m, ef_factor=ef_factor, threads=threads)
        h = hnswlib.Index(space=HNSW_SPACE[metric], dim=int(dim))
        try:
            h.load_index(str(Path(path)), max_elements=int(count))
        except RuntimeError as e:
            raise RecembIndexError(f"{path}: hnswlib cannot read it ({e})") from None
        if h.element_count != count:
            raise RecembIndexError(f"{path}: holds {h.element_count} items, expected {count}")
        self.ef_construction = int(h.ef_construction)
        self._hnsw, self._count, self._dim = h, int(count), int(dim)
        return self

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append ``vectors [M, D]`` as new rows; returns their rows ``[M]`` (``count .. count+M-1``)."""
        x = check_vectors(np.atleast_2d(np.asarray(vectors, dtype=np.float32)), "HnswIndex.add")
        h = self._require()
        if x.shape[1] != self.dim:
            raise RecembIndexError(f"new vectors have dimension {x.shape[1]}, the index {self.dim}")
        if not np.isfinite(x).all():
            raise RecembIndexError("new vectors hold NaN or inf; fix the item's features before adding it")
        with self._lock:
            rows = np.arange(self._count, self._count + len(x))
            if self._count + len(x) > h.get_max_elements():  # grow by doubling: amortised O(1) per add
                h.resize_index(max(self._count + len(x), 2 * h.get_max_elements()))
            h.add_items(x, rows, num_threads=1)
            self._count += len(x)
        return rows

    def remove(self, rows: Sequence[int] | np.ndarray) -> None:
        """Mark ``rows`` deleted: searches never return them again (already-deleted rows are skipped)."""
        h = self._require()
        rows = np.asarray(rows, dtype=np.int64).ravel()
        bad = rows[(rows < 0) | (rows >= self._count)]
        if bad.size:
            raise RecembIndexError(f"rows {bad[:5].tolist()} are not in this index of {self._count} rows")
        with self._lock:
            for r in set(rows.tolist()) - self._deleted:
                h.mark_deleted(int(r))
                self._deleted.add(int(r))

    def _require(self) -> hnswlib.Index:
        if self._hnsw is None:
            raise RecembIndexError("HnswIndex is empty: call build(vectors) or load it first")
        return self._hnsw

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Index.search`, plus ``exclude``: per query, rows never to return (skipped in the walk)."""
        q, k, rows, scores = self._start(queries, k)
        if exclude is not None and len(exclude) != q.shape[0]:
            raise RecembIndexError(f"exclude has {len(exclude)} lists for {q.shape[0]} queries; one per query")
        if q.shape[0] and self._count:
            self._search(q, min(k, self._count), rows, scores, exclude)
        return rows, scores

    def _search(
        self,
        queries: np.ndarray,
        k: int,
        rows: np.ndarray,
        scores: np.ndarray,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> None:
        h = self._require()
        live = self._count - len(self._deleted)
        if live <= 0:
            return
        with self._lock:
            h.set_ef(self.ef(k))
            if exclude is None or not any(len(e) for e in exclude):
                self._query(h, queries, min(k, live), rows, scores, None)
            else:  # one filter per query: hnswlib takes one per call
                for i, ex in enumerate(exclude):
                    skip = {int(r) for r in np.asarray(ex, dtype=np.int64).tolist()}
                    self._query(h, queries[i : i + 1], min(k, live), rows[i : i + 1], scores[i : i + 1], skip or None)
        valid = rows[:, :k] >= 0
        s = scores[:, :k]
        if self.metric == "euclidean":
            s[valid] = -np.sqrt(np.maximum(s[valid], 0.0))
        else:  # cosine (unit vectors inside hnswlib) and dot: distance = 1 - q.x
            s[valid] = 1.0 - s[valid]

    def _query(
        self, h: hnswlib.Index, q: np.ndarray, k: int, rows: np.ndarray, scores: np.ndarray, skip: set[int] | None
    ) -> None:
        """hnswlib's knn_query into ``rows``/``scores``; it raises when it finds fewer than k (deleted or
        excluded rows, a sparse graph), so then each query is retried with fewer."""
        keep = None if skip is None else (lambda label: label not in skip)
        threads = self.threads if keep is None else 1  # the filter is a Python call: one thread
        try:
            found, dist = h.knn_query(q, k=k, num_threads=threads, filter=keep)
            rows[:, :k], scores[:, :k] = found, dist
            return
        except RuntimeError:
            pass
        for i in range(q.shape[0]):
            kk = k
            while kk >= 1:
                try:
                    found, dist = h.knn_query(q[i : i + 1], k=kk, num_threads=1, filter=keep)
                except RuntimeError:
                    kk //= 2
                    continue
                rows[i, :kk], scores[i, :kk] = found[0], dist[0]
                break
