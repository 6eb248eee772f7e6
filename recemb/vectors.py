"""Numpy helpers shared by EmbeddingSets, indexes, retrieval and evaluation (a leaf module: numpy only)."""

from __future__ import annotations

import numpy as np

#: Similarity metrics an EmbeddingSet or an index can declare.
METRICS = ("cosine", "dot", "euclidean")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``[N, D]`` scaled to unit L2 norm, as float32 ``[N, D]``; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)
