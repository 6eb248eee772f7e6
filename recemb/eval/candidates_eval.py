"""Score written candidates: is the held-out click inside each user's candidate list?

A candidate run made with ``candidates.holdout`` = ``ml`` or ``sess``
(:mod:`recemb.retrieval.candidates`) queried the train part of that
protocol's split; :mod:`recemb.eval.holdout_queries` rebuilds the same split, so every
key (user, or ``"<session>#<i>"`` prefix) has its target. Per key the
target's rank in the list (1-based, ``inf`` when absent, also for keys with
no candidates) gives, for every cut-off K <= the run's k:

* ``recall@K`` (= hit rate, one target per key), ``ndcg@K``, ``mrr@K``
  (:mod:`recemb.eval.metrics`), over all keys of the split,
* ``covered``: share of keys that got any candidates,
* ``coverage``: share of the catalogue (items with a train event) that
  appears in some list, and ``fallback_share``: share of rows filled by
  popularity.

With ``exclude_seen`` the lists never hold a history item, so a test click
that repeats one is a miss here, while the P-ML runner keeps such a target
rankable: on data with repeat clicks, candidate recall is the lower one.

A production run (``holdout: none``) has no held-out click: only the
coverage figures are reported. Candidates from EmbeddingSets trained on all
events (``recemb train``) saw the test clicks: their recall is optimistic,
like ``eval.run_embeddings``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recemb.errors import DataValidationError
from recemb.eval.holdout_queries import holdout_queries
from recemb.eval.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from recemb.retrieval.candidates import MANIFEST_FILE, SUCCESS_FILE, read_candidates
from recemb.retrieval.retriever import POPULARITY

PROTOCOL_OF_HOLDOUT = {"ml": "ml", "sess": "sess"}


def target_ranks(candidates: pl.DataFrame, targets: pl.DataFrame) -> np.ndarray:
    """``[Q]`` 1-based rank of each target in its key's list, ``inf`` when absent.

    Args:
        candidates: ``[user_id, rank, item_id, ...]`` rows (one list per user_id).
        targets: ``[user_id, target]``, one row per key; Q = its height.
    """
    hits = targets.join(
        candidates.select("user_id", pl.col("item_id").alias("target"), "rank"),
        on=["user_id", "target"],
        how="left",
        maintain_order="left",
    )
    if hits.height != targets.height:
        raise DataValidationError(
            "candidates list an item twice for one user; regenerate them with `recemb candidates CONFIG`"
        )
    return hits["rank"].cast(pl.Float64).fill_null(np.inf).to_numpy()


def score_candidates(
    candidates: pl.DataFrame,
    targets: pl.DataFrame | None,
    ks: Sequence[int],
    k: int,
    catalogue: Sequence[str] | pl.Series | None = None,
) -> dict[str, Any]:
    """Metrics of one candidate set (module docstring); cut-offs above ``k`` are left out.

    Args:
        candidates: the written rows (:data:`~recemb.retrieval.candidates.CANDIDATES_SCHEMA`).
        targets: ``[user_id, target]`` held-out clicks, or None (coverage only).
        ks: cut-offs, e.g. ``[10, 20]``.
        k: candidates per key in the run.
        catalogue: the catalogue's item ids, for ``coverage`` (items outside it do not count).
    """
    out: dict[str, Any] = {}
    if targets is not None:
        ranks = target_ranks(candidates, targets)
        for kk in sorted(set(ks)):
            if kk <= k:
                out[f"recall@{kk}"] = recall_at_k(ranks, kk)
                out[f"ndcg@{kk}"] = ndcg_at_k(ranks, kk)
                out[f"mrr@{kk}"] = mrr_at_k(ranks, kk)
        out["queries"] = int(targets.height)
        have = targets["user_id"].is_in(candidates["user_id"].unique().implode())
        out["covered"] = have.sum() / have.len() if targets.height else 0.0
    if catalogue is not None and len(catalogue):
        cat = pl.Series("item_id", list(catalogue), dtype=pl.String).unique()
        out["coverage"] = candidates["item_id"].unique().is_in(cat.implode()).sum() / cat.len()
    fallback = candidates["source"] == POPULARITY
    out["fallback_share"] = fallback.sum() / fallback.len() if candidates.height else 0.0
    out["rows"] = int(candidates.height)
    return out


def evaluate_candidates(
    out_dir: str | Path, events: pl.DataFrame, ks: Sequence[int], gap_minutes: float = 30.0
) -> dict | None:
    """Score the candidate run in ``out_dir`` against its holdout; None without a finished run.

    Args:
        out_dir: a ``generate_candidates`` output (``<run>/candidates``).
        events: the canonical events the run was made from.
        ks: cut-offs (those beyond the run's k are left out).
        gap_minutes: sessionization gap of the ``sess`` holdout (``data.sessionize``).

    Returns ``{"holdout", "protocol" (ml/sess/None), "row": {"model": "written[<sources>]",
    metrics...}}``, the row shaped like :func:`recemb.eval.evaluate.run_rows` rows, so that
    ``recemb evaluate`` can print it beside the protocol's table.
    """
    out = Path(out_dir)
    if not (out / SUCCESS_FILE).is_file():
        return None
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    cands = read_candidates(out)
    holdout = manifest["holdout"]
    queries, fit = holdout_queries(events, holdout, gap_minutes)
    targets = None if holdout == "none" else queries.select("user_id", "target")
    row = score_candidates(cands, targets, list(ks), manifest["k"], fit["item_id"].unique())
    return {
        "holdout": holdout,
        "protocol": PROTOCOL_OF_HOLDOUT.get(holdout),
        "row": {"model": f"written[{'+'.join(manifest['sources'])}]", **row},
    }
