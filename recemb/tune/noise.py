"""How far apart two validation scores must be to differ beyond noise.

The selection metrics are means over validation queries of per-query values
in [0, 1] (recall, NDCG, MRR, hit rate, per-impression AUC). A variable in
[0, 1] with mean ``s`` has variance at most ``s * (1 - s)``, so
``sqrt(s * (1 - s) / n)`` over ``n`` queries bounds the standard error of
the score without keeping per-query values. Early stopping
(recemb.tune.stopping) and the choice of best.yaml (recemb.tune.search) both
measure gaps in these units.
"""

from __future__ import annotations

import math


def standard_error(score: float, queries: int) -> float:
    """Upper bound of the standard error of a mean of ``queries`` values in [0, 1] averaging ``score``."""
    if queries <= 0 or not math.isfinite(score):
        return math.inf
    p = min(max(score, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / queries)


def trails(score: float, reference: float, queries: int, margin: float) -> bool:
    """Is ``score`` more than ``margin`` standard errors (of ``reference``) below ``reference``?"""
    return score < reference - margin * standard_error(reference, queries)
