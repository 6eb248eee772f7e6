"""History -> query vector, shared by the batch Retriever and the online service.

The weight of each known item per query mode, and the pooling formula, are
documented once in :mod:`recemb.pooling` (whose weights this uses).
"""

from __future__ import annotations

import numpy as np

from recemb.pooling import QUERY_MODES, query_weights
from recemb.vectors import l2_normalize

__all__ = ["QUERY_MODES", "history_query", "query_weights"]


def history_query(vectors: np.ndarray, mode: str, last_n: int, cosine: bool) -> np.ndarray | None:
    """One query ``[D]`` from the vectors ``[M, D]`` of a history's known items, oldest first.

    Returns None when no item gets a positive weight (``M == 0``).
    """
    m = vectors.shape[0]
    if m == 0:
        return None
    w = query_weights(np.arange(m - 1, -1, -1), mode, last_n)
    keep = w > 0
    v = np.asarray(vectors[keep], dtype=np.float32)
    if cosine:
        v = l2_normalize(v)
    w = w[keep]
    # Row-by-row sum, as np.add.reduceat does in the batch path: same rounding, same neighbours.
    return (v * w[:, None]).sum(axis=0) / w.sum()
