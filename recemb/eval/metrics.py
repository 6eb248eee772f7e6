"""Evaluation metrics (DESIGN.md §7), vectorised with numpy.

Three families:

* **Single target** (P-ML, P-SESS, P-COLD: one held-out item per query), from
  the 1-based ranks of :func:`recemb.eval.ranking.target_ranks` (``inf`` =
  never retrievable). With one target per query ``Recall@K == HitRate@K``
  (the target is either in the top K or not); both names exist so that
  tables read like the papers they are compared with.
* **Multi target**, from top-k lists ``[Q, K]`` and each query's set of
  relevant items (a list of arrays or CSR ``(indptr, indices)``).
* **Impressions** (P-IMP, MIND): per impression, AUC / MRR / nDCG@k exactly as
  MIND's official ``evaluate.py``, and CTR@K of the re-ranked list.

Plus beyond-accuracy measures of top-k lists: catalogue coverage and
popularity bias.

Every ``*_at_k`` returns the mean over queries as a float, or the ``[Q]``
float64 per-query values with ``per_query=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recemb.errors import RecembError

Relevant = Sequence[np.ndarray] | tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- checks


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RecembError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1:
        raise RecembError(f"ranks must be a 1-D [Q] array, got shape {ranks.shape}")
    if ranks.size == 0:
        raise RecembError("ranks is empty: the protocol produced no queries; check the split")
    bad = np.flatnonzero(np.isnan(ranks) | (ranks < 1))
    if bad.size:
        i = int(bad[0])
        raise RecembError(
            f"ranks[{i}] = {ranks[i]}: ranks are 1-based (>= 1, inf = not retrievable); "
            "compute them with recemb.eval.ranking.target_ranks"
        )
    return ranks


def _reduce(values: np.ndarray, per_query: bool) -> float | np.ndarray:
    return values if per_query else float(values.mean())


# --------------------------------------------------------------------------- single target


def recall_at_k(ranks: np.ndarray, k: int, per_query: bool = False) -> float | np.ndarray:
    """Recall@K for one target per query: 1 if ``rank <= k`` else 0.

    Equal to :func:`hit_rate_at_k` when each query has a single target.

    Args:
        ranks: ``[Q]`` 1-based target ranks, ``inf`` allowed.
    """
    ranks, k = _check_ranks(ranks), _check_k(k)
    return _reduce((ranks <= k).astype(np.float64), per_query)


def hit_rate_at_k(ranks: np.ndarray, k: int, per_query: bool = False) -> float | np.ndarray:
    """HitRate@K: 1 if the target is in the top k. Same as :func:`recall_at_k` here."""
    return recall_at_k(ranks, k, per_query)


def ndcg_at_k(ranks: np.ndarray, k: int, per_query: bool = False) -> float | np.ndarray:
    """NDCG@K for one target: ``1 / log2(rank + 1)`` if ``rank <= k`` else 0.

    The ideal DCG of a single relevant item is 1, so no normalisation is needed.
    """
    ranks, k = _check_ranks(ranks), _check_k(k)
    hit = ranks <= k
    out = np.zeros(ranks.shape, dtype=np.float64)
    out[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return _reduce(out, per_query)


def mrr_at_k(ranks: np.ndarray, k: int, per_query: bool = False) -> float | np.ndarray:
    """MRR@K for one target: ``1 / rank`` if ``rank <= k`` else 0."""
    ranks, k = _check_ranks(ranks), _check_k(k)
    hit = ranks <= k
    out = np.zeros(ranks.shape, dtype=np.float64)
    out[hit] = 1.0 / ranks[hit]
    return _reduce(out, per_query)


# --------------------------------------------------------------------------- multi target


def _relevant_csr(relevant: Relevant, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``relevant`` to CSR ``(indptr [Q+1] int64, indices [nnz] int64)``."""
    # A tuple is CSR, a list is one array per query: a length test could not
    # tell (indptr, indices) from the lists of two queries.
    if isinstance(relevant, tuple):
        if len(relevant) != 2:
            raise RecembError(
                "relevant as a tuple means CSR (indptr, indices); pass a list of arrays for one array per query"
            )
        indptr = np.asarray(relevant[0])
        indices = np.asarray(relevant[1])
        if indptr.shape != (n_queries + 1,) or not np.issubdtype(indptr.dtype, np.integer):
            raise RecembError(
                f"relevant CSR indptr must be an int array of length Q + 1 = {n_queries + 1}, "
                f"got shape {indptr.shape} and dtype {indptr.dtype}"
            )
        indptr = indptr.astype(np.int64, copy=False)
    else:
        if len(relevant) != n_queries:
            raise RecembError(
                f"relevant has {len(relevant)} entries but topk_ids has {n_queries} rows; pass "
                "one array of relevant item indices per query, or CSR (indptr [Q+1], indices)"
            )
        lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n_queries)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = np.concatenate([np.asarray(r).ravel() for r in relevant]) if n_queries else np.empty(0, np.int64)
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
        raise RecembError("relevant CSR indptr must start at 0, be non-decreasing and end at len(indices)")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise RecembError(f"relevant item indices must be integers, got dtype {indices.dtype}")
    indices = indices.astype(np.int64, copy=False)
    if indices.size and indices.min() < 0:
        raise RecembError("relevant item indices must be >= 0 (dense Vocab indices)")
    return indptr, indices


def _hits(topk_ids: np.ndarray, relevant: Relevant, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hits [Q, k] bool, n_relevant [Q] int64)`` for the first k list entries.

    Membership of every ``(query, item)`` pair is one ``searchsorted`` on the
    sorted keys ``query * M + item`` of the relevant pairs: no loop per query.
    """
    topk_ids = np.asarray(topk_ids)
    if topk_ids.ndim != 2:
        raise RecembError(f"topk_ids must be a 2-D [Q, K] array, got shape {topk_ids.shape}")
    if topk_ids.size and not np.issubdtype(topk_ids.dtype, np.integer):
        raise RecembError(f"topk_ids must be integer item indices, got dtype {topk_ids.dtype}")
    q, kk = topk_ids.shape
    k = _check_k(k)
    if k > kk:
        raise RecembError(f"k = {k} is larger than the lists in topk_ids (K = {kk})")
    if q == 0:
        raise RecembError("topk_ids has no rows: the protocol produced no queries")
    ids = topk_ids[:, :k].astype(np.int64, copy=False)
    if ids.min() < -1:
        raise RecembError("topk_ids entries must be item indices >= 0, or -1 for padding")
    srt = np.sort(ids, axis=1)
    dup = np.flatnonzero(((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1))
    if dup.size:
        raise RecembError(f"topk_ids row {int(dup[0])} repeats an item; a top-k list must hold distinct items")
    indptr, indices = _relevant_csr(relevant, q)
    n_per_row = np.diff(indptr)
    empty = np.flatnonzero(n_per_row == 0)
    if empty.size:
        raise RecembError(
            f"query {int(empty[0])} has no relevant items; drop such queries before scoring "
            "(they carry no signal and would make recall undefined)"
        )
    m = int(max(ids.max(), indices.max())) + 1
    if q * m >= 2**62:
        raise RecembError(f"{q} queries x {m} items overflow the int64 pair keys; score in chunks")
    rel_keys = np.unique(np.repeat(np.arange(q, dtype=np.int64), n_per_row) * m + indices)
    n_rel = np.bincount(rel_keys // m, minlength=q)  # distinct relevant items per query
    keys = np.arange(q, dtype=np.int64)[:, None] * m + ids
    pos = np.minimum(np.searchsorted(rel_keys, keys), len(rel_keys) - 1)
    hits = (rel_keys[pos] == keys) & (ids >= 0)
    return hits, n_rel


def _discounts(n: int) -> np.ndarray:
    """``[n]`` DCG discounts ``1 / log2(position + 1)`` for positions 1..n."""
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def recall_at_k_multi(topk_ids: np.ndarray, relevant: Relevant, k: int, per_query: bool = False) -> float | np.ndarray:
    """Recall@K = ``|top-k ∩ relevant| / |relevant|`` per query.

    Args:
        topk_ids: ``[Q, K]`` int item indices, best first; ``-1`` = padding.
        relevant: per query the relevant item indices, as a *list* of ``Q``
            arrays or a *tuple* CSR ``(indptr [Q+1], indices [nnz])``; duplicates are
            counted once; every query needs at least one relevant item.
        k: cut-off, ``<= K``.
    """
    hits, n_rel = _hits(topk_ids, relevant, k)
    return _reduce(hits.sum(axis=1) / n_rel, per_query)


def hit_rate_at_k_multi(
    topk_ids: np.ndarray, relevant: Relevant, k: int, per_query: bool = False
) -> float | np.ndarray:
    """HitRate@K: 1 if any relevant item is in the top k. Arguments as :func:`recall_at_k_multi`."""
    hits, _ = _hits(topk_ids, relevant, k)
    return _reduce(np.asarray(hits.any(axis=1), dtype=np.float64), per_query)


def ndcg_at_k_multi(topk_ids: np.ndarray, relevant: Relevant, k: int, per_query: bool = False) -> float | np.ndarray:
    """NDCG@K with binary gains; ideal DCG over ``min(|relevant|, k)`` hits.

    ``DCG = sum_{j<k} hit_j / log2(j + 2)`` (0-based j). Arguments as
    :func:`recall_at_k_multi`.
    """
    hits, n_rel = _hits(topk_ids, relevant, k)
    disc = _discounts(k)
    dcg = hits.astype(np.float64) @ disc
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_rel, k)]
    return _reduce(dcg / ideal, per_query)


def mrr_at_k_multi(topk_ids: np.ndarray, relevant: Relevant, k: int, per_query: bool = False) -> float | np.ndarray:
    """MRR@K: ``1 / (1-based position of the first hit)`` in the top k, else 0."""
    hits, _ = _hits(topk_ids, relevant, k)
    any_hit = hits.any(axis=1)
    first = hits.argmax(axis=1)  # first True; 0 for rows without a hit (masked below)
    return _reduce(np.where(any_hit, 1.0 / (first + 1.0), 0.0), per_query)


# --------------------------------------------------------------------------- impressions


def _impression_order(group_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Sort shown items by (impression, score desc) and gather per-impression counts.

    Ties in score are ordered by descending row, which is what MIND's
    ``np.argsort(y_score)[::-1]`` does whenever numpy's argsort is stable on
    that input (always for impressions of up to 16 items).

    Returns arrays: ``g`` [R] dense impression code of each sorted row, ``pos``
    [R] 0-based position inside its impression, ``y`` [R] float labels sorted,
    ``sizes``/``n_pos`` [G], ``codes`` [R] unsorted impression codes.
    """
    group_ids = np.asarray(group_ids)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    r = len(group_ids)
    if group_ids.ndim != 1 or labels.shape != (r,) or scores.shape != (r,):
        raise RecembError(
            "group_ids, labels and scores must be 1-D arrays of the same length [R] (one row "
            f"per shown item), got {group_ids.shape}, {labels.shape}, {scores.shape}"
        )
    if r == 0:
        raise RecembError("no shown items: group_ids/labels/scores are empty")
    if labels.dtype != np.bool_:
        if not np.issubdtype(labels.dtype, np.number) or not np.isin(labels, (0, 1)).all():
            raise RecembError(f"labels must be bool (clicked) or 0/1, got dtype {labels.dtype} with other values")
    if not np.issubdtype(scores.dtype, np.number):
        raise RecembError(f"scores must be numeric, got dtype {scores.dtype}")
    scores = scores.astype(np.float64, copy=False)
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise RecembError(f"scores[{int(nan[0])}] is NaN; the model produced an invalid score")
    y_all = labels.astype(np.float64)
    _, codes = np.unique(group_ids, return_inverse=True)
    codes = codes.ravel().astype(np.int64)
    sizes = np.bincount(codes)
    n_pos = np.bincount(codes, weights=y_all, minlength=len(sizes))
    order = np.lexsort((-np.arange(r), -scores, codes))
    g = codes[order]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return {
        "g": g,
        "pos": np.arange(r) - starts[g],
        "y": y_all[order],
        "sizes": sizes,
        "n_pos": n_pos,
        "starts": starts,
        "codes": codes,
        "scores": scores,
        "y_all": y_all,
    }


def _impression_auc(o: dict[str, np.ndarray]) -> np.ndarray:
    """``[G]`` ROC AUC per impression (Mann-Whitney U with average ranks for ties).

    Equals sklearn's ``roc_auc_score`` per impression; NaN where an impression
    lacks a click or a non-click.
    """
    codes, scores, y_all = o["codes"], o["scores"], o["y_all"]
    r = len(codes)
    order = np.lexsort((scores, codes))
    g, s, y = codes[order], scores[order], y_all[order]
    new_run = np.ones(r, dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    first = np.flatnonzero(new_run)
    last = np.concatenate([first[1:] - 1, [r - 1]])
    run = np.cumsum(new_run) - 1
    # 1-based average rank inside the impression: ties share the mean position.
    rank = (first[run] + last[run]) / 2.0 - o["starts"][g] + 1.0
    n_pos = o["n_pos"]
    n_neg = o["sizes"] - n_pos
    u = np.bincount(g, weights=rank * y, minlength=len(n_pos)) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / (n_pos * n_neg)


def impression_metrics(
    group_ids: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    ks: Sequence[int] = (5, 10),
) -> dict[str, float]:
    """AUC, MRR and nDCG@k per impression, as in MIND's official evaluation.

    Per impression (MIND ``evaluate.py`` / microsoft/recommenders):
    items ordered by score descending; ``dcg@k = sum (2^y - 1) / log2(j + 2)``
    over the first k (0-based j); ``ndcg@k = dcg(y, score, k) / dcg(y, y, k)``;
    ``mrr = sum(y_sorted / (j + 1)) / sum(y)``; ``auc = roc_auc_score(y, score)``.
    Averaged over impressions with at least one click and one non-click.

    Args:
        group_ids: ``[R]`` impression id of each shown item (any sortable dtype).
        labels: ``[R]`` bool (or 0/1), clicked.
        scores: ``[R]`` model score, higher = shown first; no NaN.
        ks: cut-offs for nDCG.

    Returns:
        ``{"auc", "mrr", "ndcg@<k>" ..., "n_impressions", "n_skipped"}``:
        means over the impressions used, how many were used, and how many
        were skipped (all clicks or no clicks).
    """
    ks = [_check_k(k, "ks entry") for k in ks]
    o = _impression_order(group_ids, labels, scores)
    g, pos, y, n_pos = o["g"], o["pos"], o["y"], o["n_pos"]
    n_groups = len(n_pos)
    use = (n_pos > 0) & (n_pos < o["sizes"])
    n_used = int(use.sum())
    if n_used == 0:
        raise RecembError(
            "no impression has both a click and a non-click; AUC/MRR/nDCG are undefined "
            "(check the labels column and the impression grouping)"
        )
    out: dict[str, float] = {"auc": float(_impression_auc(o)[use].mean())}
    mrr = np.bincount(g, weights=y / (pos + 1.0), minlength=n_groups)
    out["mrr"] = float((mrr[use] / n_pos[use]).mean())
    # Binary labels: gain 2^y - 1 == y, and the ideal order puts all clicks first.
    disc = 1.0 / np.log2(pos + 2.0)
    cum_disc = np.concatenate([[0.0], np.cumsum(_discounts(max(ks)))])
    for k in ks:
        dcg = np.bincount(g, weights=y * disc * (pos < k), minlength=n_groups)
        ideal = cum_disc[np.minimum(n_pos, k).astype(np.int64)]
        out[f"ndcg@{k}"] = float((dcg[use] / ideal[use]).mean())
    out["n_impressions"] = n_used
    out["n_skipped"] = n_groups - n_used
    return out


def ctr_at_k(group_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """CTR@K: share of the top-k re-ranked shown items that were clicked.

    Per impression: clicks among its ``min(k, size)`` best-scored items divided
    by ``min(k, size)`` (short impressions count with the items they have);
    then the mean over **all** impressions, including those without any click,
    since they are real traffic. Arguments as :func:`impression_metrics`.
    """
    k = _check_k(k)
    o = _impression_order(group_ids, labels, scores)
    clicks = np.bincount(o["g"], weights=o["y"] * (o["pos"] < k), minlength=len(o["sizes"]))
    return float((clicks / np.minimum(o["sizes"], k)).mean())


# --------------------------------------------------------------------------- beyond accuracy


def _valid_ids(topk_ids: np.ndarray, n_items: int) -> np.ndarray:
    """Check ``[Q, K]`` ids against the catalogue; return the ``[Q, K]`` mask of non-padding."""
    topk_ids = np.asarray(topk_ids)
    if topk_ids.ndim != 2:
        raise RecembError(f"topk_ids must be a 2-D [Q, K] array, got shape {topk_ids.shape}")
    if topk_ids.size and not np.issubdtype(topk_ids.dtype, np.integer):
        raise RecembError(f"topk_ids must be integer item indices, got dtype {topk_ids.dtype}")
    bad = (topk_ids < -1) | (topk_ids >= n_items)
    if bad.any():
        q, j = np.argwhere(bad)[0]
        raise RecembError(
            f"topk_ids[{q}, {j}] = {int(topk_ids[q, j])} is outside the catalogue [0, {n_items}); "
            "-1 is the only allowed padding"
        )
    return topk_ids >= 0


def catalogue_coverage(topk_ids: np.ndarray, n_items: int) -> float:
    """Share of the catalogue recommended at least once.

    Args:
        topk_ids: ``[Q, K]`` int item indices; ``-1`` = padding (ignored).
        n_items: catalogue size N.
    """
    n_items = _check_k(n_items, "n_items")
    valid = _valid_ids(topk_ids, n_items)
    seen = np.zeros(n_items, dtype=bool)
    seen[np.asarray(topk_ids)[valid]] = True
    return float(seen.mean())


def popularity_bias(topk_ids: np.ndarray, item_popularity: np.ndarray) -> dict[str, float]:
    """Popularity of what is recommended.

    * ``arp`` (average recommendation popularity, Abdollahpouri et al. 2019):
      the mean over lists of the mean popularity of the list's items.
    * ``mean_pop_percentile``: the same with each item's popularity percentile
      in the catalogue, in ``[0, 1]``, mid-rank for ties (``(#less + #equal/2) / N``;
      0.5 = a typical item, near 1 = the head).

    Args:
        topk_ids: ``[Q, K]`` int item indices; ``-1`` = padding (ignored;
            lists with no item at all are left out).
        item_popularity: ``[N]`` popularity per item (e.g. train event count).
    """
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or pop.size == 0 or np.isnan(pop).any():
        raise RecembError("item_popularity must be a non-empty 1-D [N] array without NaN")
    n = pop.size
    valid = _valid_ids(topk_ids, n)
    values, inverse, counts = np.unique(pop, return_inverse=True, return_counts=True)
    less = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pct = ((less + counts / 2.0) / n)[inverse.ravel()]
    ids = np.where(valid, topk_ids, 0)
    n_per_row = valid.sum(axis=1)
    rows = n_per_row > 0
    if not rows.any():
        raise RecembError("topk_ids holds no items (all padding)")

    def list_mean(per_item: np.ndarray) -> float:
        sums = np.where(valid, per_item[ids], 0.0).sum(axis=1)
        return float((sums[rows] / n_per_row[rows]).mean())

    return {"arp": list_mean(pop), "mean_pop_percentile": list_mean(pct)}
