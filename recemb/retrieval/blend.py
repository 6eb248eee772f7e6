"""The one blending core: per-source ranked items -> one user's k candidates.

Both the batch job (:meth:`recemb.retrieval.retriever.Retriever.recommend_batch`)
and the online service (:meth:`~recemb.retrieval.retriever.Retriever.answer`)
call :func:`blend` once per user, on what each source found for that user, so
the two paths cannot disagree. Per user:

1. **filter**: drop excluded (seen, per-user ``exclude``) and blocked items;
   each source keeps its best ``k``.
2. either **fusion** (``weights``): every item scores
   ``sum_s w_s / (RRF_K + rank_s)`` over the sources that found it (rank
   1-based after filtering), the best k are taken (weighted reciprocal-rank
   fusion, Cormack et al. 2009; an item found by two sources rises);
   or **quotas**, in priority order (= source order): source 1 takes its best
   ``quota_1`` items, source 2 its best ``quota_2`` items not already taken,
   ..., then free places go to all sources' remaining items by (rank within
   source, source order).
3. **popularity**: places still free go to popular items not excluded,
   blocked or taken (also the whole list for a user no source can serve).

Quota lists are ordered by (phase, pick, source order): quota picks first,
interleaved across sources, then leftovers, then popularity. Scores are the
fused score (a source's own when it is the only one), or under quotas each source's own (not comparable across
sources); a popularity row scores ``1 / (1 + popularity rank)``.

Measured on the quickstart (P-SESS, four sources fitted on the train split):
Recall@20 0.674 fused with equal weights, 0.623 with even quotas (the
interleaving puts every source's first item before anyone's second).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recemb.errors import RecembError

POPULARITY = "popularity"
RRF_K = 10  # rank offset of the fusion: small, so that a source's first places count (k is 10-100)
Hit = tuple[str, float, str]  # (item_id, score, source)
#: One source's finds for one user: ``(item ids [M] object, scores [M])``, best first, unfiltered.
Found = tuple[np.ndarray, np.ndarray]
#: One place of a list: ``(phase, pick, source order, item, score, source)``; phase 0 = quota pick or
#: fused, 1 = leftover, 2 = popularity. Lists are ordered by (phase, pick, source order).
Pick = tuple[int, int, int, str, float, str]
PerSource = list[tuple[int, str, list[tuple[str, float]]]]  # (source order, name, filtered (item, score)s)


@dataclass(frozen=True)
class Answer:
    """One user's top-k ``hits``; ``fallback`` when no source could serve them (all popularity)."""

    hits: list[Hit]
    fallback: bool


def quotas_for(names: Sequence[str], k: int, quotas: Mapping[str, int | float] | None) -> dict[str, int]:
    """``{source: places}`` of a k-long list: ``quotas`` (counts, or fractions of k) checked, or k split evenly."""
    names = list(names)
    if quotas is None:
        base, extra = divmod(k, len(names))
        return {n: base + (i < extra) for i, n in enumerate(names)}
    unknown = set(quotas) - set(names)
    if unknown:
        raise RecembError(f"quotas name unknown sources {sorted(unknown)}; sources are {names}")
    out = {}
    for n in names:
        v = quotas.get(n, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v < 0:
            raise RecembError(f"quota for source {n!r} must be a count >= 0 or a fraction of k, got {v!r}")
        out[n] = int(v) if isinstance(v, (int, np.integer)) else int(np.floor(float(v) * k))
    return out


def fusion_weights(
    names: Sequence[str], quotas: Mapping[str, int | float] | None, weights: Mapping[str, float] | None
) -> dict[str, float] | None:
    """The weights :func:`blend` fuses with: None under quotas, else ``weights`` or 1 for every source."""
    if quotas is not None:
        return None
    return dict(weights) if weights is not None else dict.fromkeys(names, 1.0)


def blend(
    found: Sequence[tuple[str, Found | None]],
    k: int,
    quota: Mapping[str, int],
    excluded: set[str] | frozenset[str],
    blocked: set[str] | frozenset[str],
    popularity: Sequence[str],
    weights: Mapping[str, float] | None = None,
) -> Answer:
    """One user's top-k (module docstring).

    Args:
        found: ``(source name, Found or None)`` in priority order; None = the
            source could not form a query for this user.
        k: list length.
        quota: places per source (:func:`quotas_for`).
        excluded: this user's excluded ids (seen items when excluding them, plus ``exclude``).
        blocked: ids never returned.
        popularity: ids, most popular first.
        weights: ``{source: weight}`` to fuse by weighted reciprocal rank instead of
            quotas (module docstring); a source without a weight counts 0.
    """
    per_source: PerSource = []
    for order, (name, f) in enumerate(found):
        if f is None:
            continue
        cands: list[tuple[str, float]] = []
        for item, score in zip(f[0].tolist(), f[1].tolist()):
            if item in excluded or item in blocked:
                continue
            cands.append((item, score))
            if len(cands) == k:
                break
        if cands:
            per_source.append((order, name, cands))

    picked = _fuse(per_source, k, weights) if weights is not None else _by_quota(per_source, k, quota)
    from_sources = bool(picked)  # no source place taken: a popularity-only answer (a fallback)
    taken = {p[3] for p in picked}
    need = k - len(picked)
    if need > 0:
        pick, order = 0, len(found)
        for pop_rank, item in enumerate(popularity):
            if pick >= need:
                break
            if item in excluded or item in blocked or item in taken:
                continue
            picked.append((2, pick, order, item, float(np.float32(1.0 / (1.0 + pop_rank))), POPULARITY))
            pick += 1
    picked.sort(key=lambda p: (p[0], p[1], p[2]))
    return Answer([(item, score, src) for _, _, _, item, score, src in picked[:k]], fallback=not from_sources)


def _by_quota(per_source: PerSource, k: int, quota: Mapping[str, int]) -> list[Pick]:
    """Quota picks in source order (phase 0), then leftovers by (rank within source, source order) (phase 1)."""
    picked: list[Pick] = []
    taken: set[str] = set()
    for order, name, cands in per_source:
        pick = 0
        for item, score in cands:
            if pick >= quota[name]:
                break
            if item not in taken:
                picked.append((0, pick, order, item, score, name))
                taken.add(item)
                pick += 1
    rest = sorted(
        (srank, order, item, score, name)
        for order, name, cands in per_source
        for srank, (item, score) in enumerate(cands)
        if item not in taken
    )
    pick = 0
    for _srank, order, item, score, name in rest:
        if len(picked) >= k:
            break
        if item not in taken:
            picked.append((1, pick, order, item, score, name))
            taken.add(item)
            pick += 1
    return picked


def best_first(cols: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(cols, scores)`` of one row, best first, ties by the lower column (every caller agrees)."""
    if k < len(scores):  # only the best k (and every tie with the k-th) need sorting
        keep = scores >= scores[np.argpartition(-scores, k - 1)[k - 1]]
        cols, scores = cols[keep], scores[keep]
    order = np.lexsort((cols, -scores))[:k]
    return cols[order], scores[order]


def _fuse(per_source: PerSource, k: int, weights: Mapping[str, float]) -> list[Pick]:
    """Weighted reciprocal-rank fusion: ``sum_s w_s / (RRF_K + rank_s)``, best k (phase 0).

    Ties go to the better best rank, then to the source order; an item's source is the one
    that contributes most to its score. With one source taking part, its own list and scores.
    """
    taking_part = [(name, cands) for _, name, cands in per_source if weights.get(name, 0.0) > 0]
    if len(taking_part) == 1:  # one source: its own ranking, and its own scores
        name, cands = taking_part[0]
        return [(0, pick, 0, item, score, name) for pick, (item, score) in enumerate(cands[:k])]
    fused: dict[str, list] = {}  # item -> [score, best rank, order of best contribution, best term, source]
    for order, name, cands in per_source:
        w = float(weights.get(name, 0.0))
        if w <= 0:
            continue
        for srank, (item, _score) in enumerate(cands):
            term = w / (RRF_K + srank + 1)
            entry = fused.get(item)
            if entry is None:
                fused[item] = [term, srank, order, term, name]
                continue
            entry[0] += term
            entry[1] = min(entry[1], srank)
            if term > entry[3]:
                entry[2], entry[3], entry[4] = order, term, name
    best = sorted(fused.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[1][2]))[:k]
    return [(0, pick, 0, item, float(np.float32(e[0])), e[4]) for pick, (item, e) in enumerate(best)]
