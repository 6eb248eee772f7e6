"""Exact top-k by blocked matrix product (numpy only, so serving needs no torch).

Memory is bounded by ``max_block_bytes``: queries are processed in blocks of
``Bq`` rows against item blocks of ``Bi`` rows with ``Bq * Bi * 4 <= max_block_bytes``,
and a running top-k is merged across item blocks. Ties are broken by the
lower row within the returned list, so results are deterministic.
"""

from __future__ import annotations

import numpy as np

from recemb.index.base import Index, RecembIndexError, check_vectors, to_similarity
from recemb.vectors import l2_normalize

DEFAULT_BLOCK_BYTES = 64 << 20


class ExactIndex(Index):
    """Brute-force index; the reference for recall and for small catalogues.

    ``vectors`` are kept by reference (a read-only memmap stays a memmap); for
    cosine only ``[N]`` inverse norms are stored, not a normalised copy.
    """

    is_exact = True

    def __init__(self, metric: str = "cosine", max_block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__(metric)
        self.max_block_bytes = int(max_block_bytes)
        self._x: np.ndarray | None = None
        self._inv_norm: np.ndarray | None = None

    def build(self, vectors: np.ndarray) -> ExactIndex:
        """Index ``vectors`` ``[N, D]``; row i is result id i."""
        x = check_vectors(vectors, "ExactIndex.build")
        self._x = x
        self._count, self._dim = int(x.shape[0]), int(x.shape[1])
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1)
            self._inv_norm = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
        return self

    def _search(self, queries: np.ndarray, k: int, rows: np.ndarray, scores: np.ndarray) -> None:
        if self._x is None:  # Index.search calls this only when the index holds vectors
            raise RecembIndexError("ExactIndex is empty: call build(vectors) first")
        x = self._x
        q = l2_normalize(queries) if self.metric == "cosine" else queries
        n = self._count
        budget = max(self.max_block_bytes // 4, 1)
        bi = min(n, max(budget // max(min(q.shape[0], 256), 1), k, 1024))
        bq = max(1, min(q.shape[0], budget // bi))
        for qs in range(0, q.shape[0], bq):
            qb = q[qs : qs + bq]
            best_s = np.full((qb.shape[0], 0), -np.inf, dtype=np.float32)
            best_r = np.zeros((qb.shape[0], 0), dtype=np.int64)
            for xs in range(0, n, bi):
                xb = self._block(x, xs, xs + bi)
                inv = None if self._inv_norm is None else self._inv_norm[xs : xs + bi]
                s = to_similarity(self.metric, qb, xb, inv)
                # Top-k of the block first (no [Bq, Bi] row array), then merge [Bq, 2k].
                kb = min(k, s.shape[1])
                part = np.argpartition(-s, kb - 1, axis=1)[:, :kb] if s.shape[1] > kb else np.argsort(-s, axis=1)
                s_top = np.take_along_axis(s, part, axis=1)
                best_s, best_r = _merge_topk(np.hstack([best_s, s_top]), np.hstack([best_r, part + xs]), k)
            rows[qs : qs + bq, :k] = best_r
            scores[qs : qs + bq, :k] = best_s

    def _block(self, x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the stored vectors as float32 ``[M, D]`` (a subclass decodes them here)."""
        return np.asarray(x[lo:hi])


def _merge_topk(s: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of scores ``s [B, M]`` with their rows ``r [B, M]``, sorted best first.

    Ties are ordered by lower row id so that results do not depend on blocking.
    """
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(s, part, axis=1)
        r = np.take_along_axis(r, part, axis=1)
    order = np.lexsort((r, -s), axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)
