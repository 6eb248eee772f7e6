"""The one top-k interface every index implements (DESIGN.md §6).

Like TFRS's ``tfrs.layers.factorized_top_k.TopK``: build once from ``[N, D]``
vectors, then ``search(queries [B, D], k)``. An index only knows rows
``0..N-1``; the EmbeddingSet owns the row <-> string id mapping.

Scores are always "higher is better" so that callers never branch on metric:

====== ====================================================
metric score of item row r for query q
====== ====================================================
cosine ``q . x_r / (|q| |x_r|)`` (0 for an all-zero row)
dot    ``q . x_r``
euclid ``-|q - x_r|`` (negated L2 distance)
====== ====================================================
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from recemb.errors import RecembError
from recemb.vectors import METRICS

# Padding when an index returns fewer than k results (approximate search, tiny sets).
PAD_ROW = -1
PAD_SCORE = -np.inf


class RecembIndexError(RecembError):
    """An index cannot be built, searched or loaded; the message says how to fix it."""


class RecallBelowTarget(RecembIndexError):
    """An approximate index misses ``export.recall_target`` at its widest search (nothing was written).

    ``export.backend: auto`` answers it by exporting exact search instead.
    """

    def __init__(self, message: str, certified: dict):
        super().__init__(message)
        self.certified = certified


class Index(abc.ABC):
    """Top-k search over a fixed set of ``[N, D]`` float32 vectors.

    Subclasses implement :meth:`build` and :meth:`_search`; this class checks
    the arguments at the boundary so that no backend ever sees a wrong shape
    (Annoy would crash the process on one).
    """

    #: True when :meth:`search` returns the exact top-k.
    is_exact: bool = False
    #: True when :meth:`search` takes ``exclude`` (rows per query skipped inside the search).
    filters_inside: bool = False

    def __init__(self, metric: str = "cosine"):
        if metric not in METRICS:
            raise RecembIndexError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self._count = 0
        self._dim: int | None = None

    # ------------------------------------------------------------- properties
    @property
    def count(self) -> int:
        """Number of indexed vectors N (rows ``0..N-1``)."""
        return self._count

    @property
    def dim(self) -> int:
        """Vector dimension D; raises if the index is not built yet."""
        if self._dim is None:
            raise RecembIndexError(f"{type(self).__name__} is empty: call build(vectors) or load it first")
        return self._dim

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metric={self.metric!r}, count={self._count}, dim={self._dim})"

    # ---------------------------------------------------------------- public
    @abc.abstractmethod
    def build(self, vectors: np.ndarray) -> Index:
        """Index ``vectors`` ``[N, D]`` float32 (row i gets id i); returns ``self``."""

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for each query.

        Args:
            queries: ``[B, D]`` (or one ``[D]`` query, treated as ``B = 1``).
            k: results per query; more than ``count`` is allowed and padded.
            exclude: per query, rows never to return; only for an index with
                :attr:`filters_inside` (others: filter the results yourself).

        Returns:
            ``(rows [B, k] int64, scores [B, k] float32)``, best first per row.
            Missing results (``k > count``, or an approximate index that
            found fewer) are padded with row ``-1`` and score ``-inf``.
        """
        if exclude is not None:
            raise RecembIndexError(f"{type(self).__name__} cannot exclude rows inside its search; filter its results")
        q, k, rows, scores = self._start(queries, k)
        if q.shape[0] and self._count:
            self._search(q, min(k, self._count), rows, scores)
        return rows, scores

    # --------------------------------------------------------------- helpers
    @abc.abstractmethod
    def _search(self, queries: np.ndarray, k: int, rows: np.ndarray, scores: np.ndarray) -> None:
        """Fill ``rows[:, :k]`` / ``scores[:, :k]`` in place; ``k <= count``."""

    def _start(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """Checked ``(queries [B, D], k, rows [B, k] padded, scores [B, k] padded)`` of a search."""
        q = self._check_queries(queries)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RecembIndexError(f"k must be a positive integer, got {k!r}")
        rows = np.full((q.shape[0], int(k)), PAD_ROW, dtype=np.int64)
        scores = np.full((q.shape[0], int(k)), PAD_SCORE, dtype=np.float32)
        return q, int(k), rows, scores

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise RecembIndexError(f"queries must be [B, D], got shape {q.shape}")
        if q.shape[1] != self.dim:
            raise RecembIndexError(
                f"queries have dimension {q.shape[1]} but this index holds dimension {self.dim}; "
                "query with vectors from the EmbeddingSet the index was exported from"
            )
        if not np.isfinite(q).all():
            bad = int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])
            raise RecembIndexError(f"query row {bad} holds NaN or inf")
        return np.ascontiguousarray(q)


def check_vectors(vectors: np.ndarray, where: str) -> np.ndarray:
    """``vectors`` as a float32 ``[N, D]`` array (no copy when already so); raises on bad shape/values."""
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise RecembIndexError(
            f"{where}: vectors must be a 2-D array [N, D], got shape {getattr(vectors, 'shape', None)}"
        )
    if vectors.shape[1] < 1:
        raise RecembIndexError(f"{where}: vectors have dimension 0")
    if vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    return vectors


def to_similarity(metric: str, q: np.ndarray, x: np.ndarray, x_inv_norm: np.ndarray | None) -> np.ndarray:
    """Scores ``[B, M]`` of unit-or-raw queries ``q [B, D]`` against a block ``x [M, D]``.

    For cosine ``q`` must already be unit-norm and ``x_inv_norm [M]`` holds
    ``1/|x_r|`` (0 for zero rows), which avoids a normalised copy of ``x``.
    """
    s = q @ x.T
    if metric == "cosine":
        if x_inv_norm is None:
            raise ValueError("to_similarity: metric 'cosine' needs x_inv_norm [M]")
        s *= x_inv_norm[None, :]
    elif metric == "euclidean":
        # -|q - x| = -sqrt(|q|^2 - 2 q.x + |x|^2), clipped at 0 against rounding.
        sq = (q * q).sum(1)[:, None] - 2.0 * s + (x * x).sum(1)[None, :]
        s = -np.sqrt(np.maximum(sq, 0.0))
    return s.astype(np.float32, copy=False)
