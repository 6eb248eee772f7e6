"""History -> one query vector by weighted pooling of item vectors (numpy only).

Shared by every layer that turns a history into a query: the models' default
query encoder (recemb.models.protocol), the evaluation scorers over
EmbeddingSets, the batch Retriever and the online service. ``j`` counts a
history's *known* items (those with a vector) back from the most recent one
(``j = 0``):

============ =====================
mode         weight of item j
============ =====================
last         1 if j == 0 else 0
mean         1
mean_last_n  1 if j < last_n else 0
recency      1 / (j + 1)
============ =====================

The query is ``sum_j w_j x_j / sum_j w_j`` over the item vectors ``x_j``,
unit-normalised first for cosine so that every item counts equally.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

QueryMode = Literal["last", "mean", "mean_last_n", "recency"]
QUERY_MODES: tuple[str, ...] = ("last", "mean", "mean_last_n", "recency")


def query_weights(j: np.ndarray, mode: str, last_n: int) -> np.ndarray:
    """Weights ``[M]`` float32 of items at recency positions ``j [M]`` (0 = most recent known item)."""
    j = np.asarray(j)
    if mode == "last":
        return (j == 0).astype(np.float32)
    if mode == "mean":
        return np.ones(j.shape, dtype=np.float32)
    if mode == "mean_last_n":
        return (j < last_n).astype(np.float32)
    if mode == "recency":
        return (1.0 / (j + 1)).astype(np.float32)
    raise ValueError(f"query mode must be one of {QUERY_MODES}, got {mode!r}")


def known_after(items: np.ndarray, offsets: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``[T]`` number of known items after each position of a CSR batch, within its history.

    Args:
        items: ``[T]`` row indices (into ``known``), oldest first within a history.
        offsets: ``[B + 1]``; history b is ``items[offsets[b]:offsets[b + 1]]``.
        known: ``[N]`` bool, True where a row has a vector.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    t = int(offsets[-1] - offsets[0])
    k = known[items[offsets[0] : offsets[-1]]]
    c0 = np.concatenate([[0], np.cumsum(k)])
    seg_end = np.repeat(offsets[1:] - offsets[0], lengths)
    return c0[seg_end] - c0[np.arange(t) + 1]


def csr_weights(items: np.ndarray, offsets: np.ndarray, known: np.ndarray, mode: str, last_n: int) -> np.ndarray:
    """``[T]`` float32 weight of each position of a CSR batch; unknown items weigh 0."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if int(offsets[-1] - offsets[0]) == 0:
        return np.zeros(0, dtype=np.float32)
    k = known[items[offsets[0] : offsets[-1]]]
    j = known_after(items, offsets, known)
    return np.where(k, query_weights(j, mode, last_n), 0).astype(np.float32)


def weighted_mean(matrix: np.ndarray, items: np.ndarray, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[B, D]`` weighted mean of the rows ``matrix[items]`` per history; zero where no item weighs > 0.

    Args:
        matrix: ``[N, D]`` item vectors.
        items, offsets: the CSR batch (see :func:`known_after`).
        weights: ``[T]`` per-position weights (:func:`csr_weights`).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    b, d = len(offsets) - 1, matrix.shape[1]
    out = np.zeros((b, d), dtype=np.float32)
    lengths = np.diff(offsets)
    if weights.size == 0:
        return out
    rows = items[offsets[0] : offsets[-1]]
    weighted = matrix[rows] * weights[:, None]
    nonempty = lengths > 0
    # Empty histories have zero length, so the starts of non-empty ones delimit
    # exactly their own segments for reduceat.
    starts = offsets[:-1][nonempty] - offsets[0]
    out[nonempty] = np.add.reduceat(weighted, starts, axis=0)
    totals = np.zeros(b, dtype=np.float32)
    totals[nonempty] = np.add.reduceat(weights, starts)
    return out / np.where(totals > 0, totals, 1.0)[:, None]
