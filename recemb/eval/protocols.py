"""Protocol runners: fit a scorer on a split, score every test query, measure (DESIGN.md §7).

==========  ===============================================================
runner      queries, targets, masking
==========  ===============================================================
run_ml      one query per test user: the user's train history ordered by
            (ts, item_id); target = the test item. With ``exclude_seen`` the
            user's train and validation items are masked, the target too
            when it is one of them (a re-click is then a miss, as in the
            candidate lists production ships); without, nothing is masked.
            ``"auto"`` decides by the train part's repeat share
            (recemb.data.repeats). Recall, NDCG, MRR, HitRate @K,
            coverage and popularity bias of the top-K lists
run_sess    every test session, every position i >= 1: query = items
            0..i-1, target = item i; no masking (a repeat click counts, the
            query's last item may be recommended). Recall, MRR, NDCG @K
run_imp     one query per test impression: the user's history events
            (stable-sorted by ts, so listed order survives equal times);
            only the shown items are scored, gathered from the full rows.
            MIND-style AUC, MRR, nDCG@5/10 and CTR@K
run_cold    run_ml on a :class:`ColdItemSplit` (targets are cold items),
            ranked twice: among all catalogue items (``recall@K``, ...:
            can a cold item win against the warm ones?) and among the cold
            items only (``cold_recall@K``, ``cold_ndcg@K``: DropoutNet's
            cold-start setting, a "new items" source of its own)
==========  ===============================================================

Every runner fits the scorer itself (timed as ``fit_s``) and scores in
batches of ``batch_size`` queries, so only one ``[B, N]`` float32 block
exists at a time (``score_s`` times the whole scoring loop, ranking
included). A target that is not in the catalogue ranks ``inf``: a miss.
Ties are broken at random from ``np.random.default_rng(seed)``.

P-IMP fitting data (``fit_on``): ``"history"`` = the history events;
``"clicks"`` = the clicked rows of the *train* impressions as events with
``event = "impression_click"`` (``session_id`` = the impression id);
``"both"`` (default) = their union. A popularity baseline must count the
clicks only (``PopularityScorer(events=["impression_click"])``): shown news
rarely occur in histories, so history counts rank shown items at chance
(DESIGN.md §10). ``refit_every`` turns on rolling refits (see
:func:`run_imp`): news popularity is short-lived, and only clicks from the
last hours beat chance clearly.

Each runner returns ``{metric: float, "queries": int, "fit_s": float,
"score_s": float}`` with metric names like ``"recall@20"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
import polars as pl

from recemb.data import schema
from recemb.data.repeats import ExcludeSeen, resolve_exclude_seen
from recemb.data.splits import ColdItemSplit, ImpressionSplit, LeaveLastOutSplit, SessionSplit
from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, DataValidationError, RecembError
from recemb.eval import metrics, ranking
from recemb.eval.queries import QuerySet, session_prefixes, user_histories
from recemb.eval.scorers import QueryBatch, Scorer

IMPRESSION_CLICK = "impression_click"


def _fit(scorer: Scorer, train: pl.DataFrame, catalogue: Vocab) -> float:
    t0 = time.perf_counter()
    scorer.fit(train, catalogue)
    return time.perf_counter() - t0


def _score(scorer: Scorer, batch: QueryBatch, n_items: int) -> np.ndarray:
    """Call the scorer and check its ``[B, N]`` output at the boundary."""
    scores = scorer.score_queries(batch)
    if not isinstance(scores, np.ndarray) or scores.shape != (len(batch), n_items):
        shape = getattr(scores, "shape", type(scores).__name__)
        raise RecembError(
            f"scorer {getattr(scorer, 'name', scorer)!r} returned scores of shape {shape}; "
            f"expected [B, N] = ({len(batch)}, {n_items}) (queries x catalogue items)"
        )
    if scores.dtype != np.float32 or not scores.flags.writeable:
        scores = scores.astype(np.float32)  # a writable float32 copy: masking is in place
    return scores


def _require_queries(n: int, what: str) -> None:
    if n == 0:
        raise DataValidationError(f"{what}: the split has no test queries; check the split (is the test part empty?)")


def _item_popularity(train: pl.DataFrame, catalogue: Vocab) -> np.ndarray:
    """``[N]`` train event count per catalogue item."""
    idx = catalogue.lookup(train["item_id"])
    return np.bincount(idx[idx >= 0], minlength=len(catalogue)).astype(np.float64)


def _rank_metrics(ranks: np.ndarray, ks: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    fns = {
        "recall": metrics.recall_at_k,
        "hit_rate": metrics.hit_rate_at_k,
        "ndcg": metrics.ndcg_at_k,
        "mrr": metrics.mrr_at_k,
    }
    return {f"{name}@{k}": float(fns[name](ranks, k)) for k in ks for name in names}


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks must be a non-empty list of positive cut-offs, got {ks}")
    return ks


# --------------------------------------------------------------------------- P-ML / P-COLD


def _run_leave_last_out(
    train: pl.DataFrame,
    validation: pl.DataFrame,
    test: pl.DataFrame,
    scorer: Scorer,
    catalogue: Vocab,
    ks: Sequence[int],
    batch_size: int,
    seed: int,
    what: str,
    cold_items: np.ndarray | None = None,
    exclude_seen: ExcludeSeen = "auto",
) -> dict:
    ks = _check_ks(ks)
    _require_queries(test.height, what)
    mask_seen = resolve_exclude_seen(exclude_seen, train)
    fit_s = _fit(scorer, train, catalogue)
    t0 = time.perf_counter()
    users = test["user_id"]
    queries = user_histories(train, catalogue, users)
    targets = catalogue.lookup(test["item_id"])
    val = pl.DataFrame({"user_id": users}).join(
        validation.select("user_id", "item_id"), on="user_id", how="left", maintain_order="left"
    )
    if val.height != users.len():
        raise DataValidationError(f"{what}: validation has more than one row for some user; expected one per user")
    val_items = catalogue.lookup(val["item_id"])
    rng = np.random.default_rng(seed)
    n, kmax = len(catalogue), max(ks)
    ranks = np.empty(len(queries), dtype=np.float64)
    cold_ranks = np.empty(len(queries), dtype=np.float64)
    top = np.empty((len(queries), min(kmax, n)), dtype=np.int64)
    warm = None
    if cold_items is not None:
        warm = np.ones(n, dtype=bool)
        warm[cold_items[cold_items >= 0]] = False
    for start, stop, batch in queries.batches(batch_size):
        scores = _score(scorer, batch, n)
        b_targets = targets[start:stop]
        rows = np.repeat(np.arange(stop - start), batch.lengths())
        cols = batch.items
        v = val_items[start:stop]
        if mask_seen:  # the target too when it repeats a seen item: production never shows it
            rows = np.concatenate([rows, np.flatnonzero(v >= 0)])
            cols = np.concatenate([cols, v[v >= 0]])
            ranking.apply_mask(scores, rows, cols)
        ranks[start:stop] = ranking.target_ranks(scores, b_targets, rng)
        idx, top_scores = ranking.topk(scores, kmax, rng)
        idx[np.isneginf(top_scores)] = -1  # fewer unmasked items than kmax: pad, never count masked ones
        top[start:stop] = idx
        if warm is not None:
            scores[:, warm] = -np.inf  # the targets are cold: they stay
            cold_ranks[start:stop] = ranking.target_ranks(scores, b_targets, rng)
    score_s = time.perf_counter() - t0
    out = _rank_metrics(ranks, ks, ("recall", "ndcg", "mrr", "hit_rate"))
    if warm is not None:
        out |= {f"cold_{k}": v for k, v in _rank_metrics(cold_ranks, ks, ("recall", "ndcg")).items()}
    pop = _item_popularity(train, catalogue)
    for k in ks:
        out[f"coverage@{k}"] = float(metrics.catalogue_coverage(top[:, :k], n))
        for key, value in metrics.popularity_bias(top[:, :k], pop).items():
            out[f"{key}@{k}"] = float(value)
    return out | {"queries": len(queries), "fit_s": fit_s, "score_s": score_s}


def run_ml(
    split: LeaveLastOutSplit,
    scorer: Scorer,
    catalogue: Vocab,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 4096,
    seed: int = 0,
    exclude_seen: ExcludeSeen = "auto",
) -> dict:
    """P-ML: rank the catalogue for each test user's train history (module doc)."""
    return _run_leave_last_out(
        split.train,
        split.validation,
        split.test,
        scorer,
        catalogue,
        ks,
        batch_size,
        seed,
        "run_ml",
        exclude_seen=exclude_seen,
    )


def run_cold(
    split: ColdItemSplit,
    scorer: Scorer,
    catalogue: Vocab,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 4096,
    seed: int = 0,
    exclude_seen: ExcludeSeen = "auto",
) -> dict:
    """P-COLD: P-ML on a cold-item split; ``catalogue`` must include the cold items (module doc)."""
    return _run_leave_last_out(
        split.train,
        split.validation,
        split.test,
        scorer,
        catalogue,
        ks,
        batch_size,
        seed,
        "run_cold",
        cold_items=catalogue.lookup(split.cold_items),
        exclude_seen=exclude_seen,
    )


# --------------------------------------------------------------------------- P-SESS


def run_sess(
    split: SessionSplit,
    scorer: Scorer,
    catalogue: Vocab,
    ks: Sequence[int] = (20,),
    batch_size: int = 4096,
    seed: int = 0,
) -> dict:
    """P-SESS: every prefix of every test session predicts its next item; no masking."""
    ks = _check_ks(ks)
    queries, targets = session_prefixes(split.test, catalogue)
    _require_queries(len(queries), "run_sess")
    fit_s = _fit(scorer, split.train, catalogue)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(queries), dtype=np.float64)
    for start, stop, batch in queries.batches(batch_size):
        scores = _score(scorer, batch, len(catalogue))
        ranks[start:stop] = ranking.target_ranks(scores, targets[start:stop], rng)
    score_s = time.perf_counter() - t0
    out = _rank_metrics(ranks, ks, ("recall", "mrr", "ndcg"))
    return out | {"queries": len(queries), "fit_s": fit_s, "score_s": score_s}


# --------------------------------------------------------------------------- P-IMP


def impression_fit_events(split: ImpressionSplit, fit_on: str = "both", before: datetime | None = None) -> pl.DataFrame:
    """Canonical events a scorer is fitted on in P-IMP (``fit_on``: module doc).

    Clicks come from the train impressions, plus, when ``before`` (a
    timestamp) is given, from the test impressions shown before it (rolling
    refits, see :func:`run_imp`).
    """
    if fit_on not in ("history", "clicks", "both"):
        raise ConfigError(f"run_imp: fit_on must be 'history', 'clicks' or 'both', got {fit_on!r}")
    shown = split.train_impressions
    if before is not None:
        shown = pl.concat([shown, split.test_impressions.filter(pl.col("ts") < before)])
    clicks = shown.filter(pl.col("clicked")).select(
        "user_id",
        "item_id",
        "ts",
        event=pl.lit(IMPRESSION_CLICK),
        weight=pl.lit(1.0, dtype=pl.Float32),
        session_id=pl.col("impression_id"),
    )
    history = split.history.select(schema.EVENTS.names)
    parts = {"history": [history], "clicks": [clicks], "both": [history, clicks]}[fit_on]
    return pl.concat(parts, how="vertical")


def run_imp(
    split: ImpressionSplit,
    scorer: Scorer,
    catalogue: Vocab,
    ks: Sequence[int] = (5, 10),
    batch_size: int = 1024,
    seed: int = 0,
    fit_on: str = "both",
    refit_every: str | None = None,
) -> dict:
    """P-IMP: score the shown items of every test impression from the user's history.

    ``catalogue`` should cover the shown items (e.g. a Vocab of history,
    impression and items-table ids); a shown item outside it scores ``-inf``.
    ``batch_size`` defaults lower than elsewhere because news catalogues are
    wide and each query needs a full ``[N]`` row before the gather.

    ``refit_every`` (a polars duration such as ``"1h"``; default None = fit
    once): rolling-origin evaluation. The test impressions are cut into
    windows of that length and, before each window, the scorer is refitted
    with the clicks of every impression shown before the window starts.
    News popularity lives for hours: on the MIND subset, click counts frozen
    at the split score AUC 0.508 while hourly refits score 0.542.
    ``fit_s`` is then the sum over refits.
    """
    ks = _check_ks(ks)
    test = split.test_impressions
    _require_queries(test.height, "run_imp")
    imps = (
        test.group_by("impression_id")
        .agg(pl.col("user_id").first(), pl.col("ts").min())
        .sort(["ts", "impression_id"])
        .with_row_index("_q")
    )
    try:
        window = imps["ts"].dt.truncate(refit_every) if refit_every else None
    except pl.exceptions.PolarsError as e:
        raise ConfigError(f"run_imp: refit_every={refit_every!r} is not a polars duration like '1h' ({e})") from None
    # The impression's time is the query's: models that read time gaps see how long the user was away.
    queries: QuerySet = user_histories(split.history, catalogue, imps["user_id"], order=("ts",), at=imps["ts"])
    shown = test.join(imps.select("impression_id", "_q"), on="impression_id").sort(["_q", "position"])
    q = shown["_q"].to_numpy().astype(np.int64)
    cols = catalogue.lookup(shown["item_id"])
    labels = shown["clicked"].to_numpy()
    row_scores = np.full(len(q), -np.inf, dtype=np.float32)
    bounds = np.searchsorted(q, np.arange(len(queries) + 1))  # rows of impression i: bounds[i]:bounds[i+1]
    # Windows are runs of queries (sorted by ts); one window = fit once.
    if window is None:
        cuts, starts_at = np.array([0, len(queries)]), [None]
    else:
        change = np.flatnonzero(window.to_numpy()[1:] != window.to_numpy()[:-1]) + 1
        cuts = np.concatenate([[0], change, [len(queries)]])
        starts_at = [window[int(c)] for c in cuts[:-1]]
    fit_s = score_s = 0.0
    for w, before in enumerate(starts_at):
        fit_s += _fit(scorer, impression_fit_events(split, fit_on, before), catalogue)
        t0 = time.perf_counter()
        for start, stop, batch in queries.batches(batch_size, int(cuts[w]), int(cuts[w + 1])):
            scores = _score(scorer, batch, len(catalogue))
            lo, hi = bounds[start], bounds[stop]
            c = cols[lo:hi]
            known = c >= 0
            sub = np.full(hi - lo, -np.inf, dtype=np.float32)
            sub[known] = scores[q[lo:hi][known] - start, c[known]]
            row_scores[lo:hi] = sub
        score_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    out = {key: float(v) for key, v in metrics.impression_metrics(q, labels, row_scores, ks=ks).items()}
    for k in ks:
        out[f"ctr@{k}"] = float(metrics.ctr_at_k(q, labels, row_scores, k))
    score_s += time.perf_counter() - t0
    return out | {"queries": len(queries), "fit_s": fit_s, "score_s": score_s, "refits": len(starts_at)}


# --------------------------------------------------------------------------- dispatch

_RUNNERS: dict[str, tuple[Callable[..., dict], type]] = {
    "ml": (run_ml, LeaveLastOutSplit),
    "sess": (run_sess, SessionSplit),
    "imp": (run_imp, ImpressionSplit),
    "cold": (run_cold, ColdItemSplit),
}


def run_protocol(name: str, split, scorer: Scorer, catalogue: Vocab, ks: Sequence[int] | None = None, **kw) -> dict:
    """Run protocol ``name`` (``"ml"``, ``"sess"``, ``"imp"``, ``"cold"``) with its runner's defaults."""
    if name not in _RUNNERS:
        raise ConfigError(f"unknown evaluation protocol {name!r}; expected one of {sorted(_RUNNERS)}")
    runner, split_type = _RUNNERS[name]
    if not isinstance(split, split_type):
        raise ConfigError(
            f"protocol {name!r} needs a {split_type.__name__} (recemb.data.splits), got {type(split).__name__}"
        )
    if ks is not None:
        kw["ks"] = ks
    return runner(split, scorer, catalogue, **kw)
