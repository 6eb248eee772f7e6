"""Tests of recemb.eval.metrics (DESIGN.md §7).

Hand-computed cases carry their arithmetic in comments; the rest are
cross-checks against torchmetrics 1.0.3, sklearn and a loop transcription of
MIND's official per-impression code, on random data and on the real MIND subset.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from recemb.errors import RecembError
from recemb.eval import metrics as M
from recemb.eval.ranking import topk

INF = np.inf


# --------------------------------------------------------------------------- single target


def test_single_target_by_hand() -> None:
    ranks = np.array([1.0, 3.0, INF])
    # Recall@2: only rank 1 is <= 2 -> 1/3.
    assert M.recall_at_k(ranks, 2) == pytest.approx(1 / 3)
    assert M.hit_rate_at_k(ranks, 2) == pytest.approx(1 / 3)  # one target: same as recall
    # Recall@5: ranks 1 and 3 -> 2/3.
    assert M.recall_at_k(ranks, 5) == pytest.approx(2 / 3)
    # NDCG@5 = (1/log2(2) + 1/log2(4) + 0) / 3 = (1 + 0.5) / 3 = 0.5.
    assert M.ndcg_at_k(ranks, 5) == pytest.approx(0.5)
    # NDCG@2: rank 3 is cut -> 1/3.
    assert M.ndcg_at_k(ranks, 2) == pytest.approx(1 / 3)
    # MRR@5 = (1/1 + 1/3 + 0) / 3 = 4/9.
    assert M.mrr_at_k(ranks, 5) == pytest.approx(4 / 9)
    np.testing.assert_allclose(M.mrr_at_k(ranks, 5, per_query=True), [1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(M.ndcg_at_k(ranks, 5, per_query=True), [1.0, 0.5, 0.0])


@pytest.mark.parametrize(
    ("ranks", "k", "match"),
    [
        (np.array([0.0, 1.0]), 5, r"ranks\[0\] = 0.0"),
        (np.array([1.0, np.nan]), 5, r"ranks\[1\]"),
        (np.array([]), 5, "empty"),
        (np.array([[1.0]]), 5, "1-D"),
        (np.array([1.0]), 0, "positive integer"),
    ],
)
def test_single_target_rejects_bad_input(ranks, k, match) -> None:
    with pytest.raises(RecembError, match=match):
        M.recall_at_k(ranks, k)


# --------------------------------------------------------------------------- multi target


def test_multi_target_by_hand() -> None:
    topk_ids = np.array([[1, 2, 3], [4, 5, 6], [7, 8, -1]])
    relevant = [np.array([2, 9]), np.array([7]), np.array([8, 7, 7])]  # duplicate 7 counts once
    # Row 0: one of two relevant found (item 2 at position 2); row 1: none; row 2: both.
    # Recall@3 = (1/2 + 0 + 2/2) / 3 = 0.5.
    assert M.recall_at_k_multi(topk_ids, relevant, 3) == pytest.approx(0.5)
    # HitRate@3 = (1 + 0 + 1) / 3.
    assert M.hit_rate_at_k_multi(topk_ids, relevant, 3) == pytest.approx(2 / 3)
    # MRR@3: first hits at positions 2, -, 1 -> (1/2 + 0 + 1) / 3 = 0.5.
    assert M.mrr_at_k_multi(topk_ids, relevant, 3) == pytest.approx(0.5)
    # NDCG@3 row 0: DCG = 1/log2(3); ideal over min(2, 3) = 2 hits: 1 + 1/log2(3).
    # Row 2: both hits at positions 1, 2 -> 1.
    row0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    np.testing.assert_allclose(M.ndcg_at_k_multi(topk_ids, relevant, 3, per_query=True), [row0, 0.0, 1.0])
    # @1: row 0 misses (item 1), row 2 hits (7) -> recall (0 + 0 + 1/2) / 3.
    assert M.recall_at_k_multi(topk_ids, relevant, 1) == pytest.approx(1 / 6)


def test_multi_target_csr_equals_list() -> None:
    rng = np.random.default_rng(0)
    topk_ids = np.stack([rng.permutation(30)[:10] for _ in range(20)])
    rel = [rng.choice(30, size=rng.integers(1, 6), replace=False) for _ in range(20)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rel])])
    csr = (indptr, np.concatenate(rel))
    for fn in (M.recall_at_k_multi, M.ndcg_at_k_multi, M.mrr_at_k_multi, M.hit_rate_at_k_multi):
        np.testing.assert_array_equal(fn(topk_ids, rel, 7, per_query=True), fn(topk_ids, csr, 7, per_query=True))


def test_multi_target_against_torchmetrics() -> None:
    torch = pytest.importorskip("torch")
    tmr = pytest.importorskip("torchmetrics.functional.retrieval")
    rng = np.random.default_rng(1)
    q, n = 60, 40
    preds = rng.random((q, n)).astype(np.float32)  # continuous: no ties
    target = rng.random((q, n)) < rng.uniform(0.02, 0.3, (q, 1))
    target[np.arange(q), rng.integers(0, n, q)] = True  # every query has a relevant item
    relevant = [np.flatnonzero(t) for t in target]
    ids, _ = topk(preds, 20)
    for k in (1, 5, 10, 20):
        ours = {
            "recall": M.recall_at_k_multi(ids, relevant, k, per_query=True),
            "ndcg": M.ndcg_at_k_multi(ids, relevant, k, per_query=True),
            "hit": M.hit_rate_at_k_multi(ids, relevant, k, per_query=True),
            "mrr": M.mrr_at_k_multi(ids, relevant, k, per_query=True),
        }
        for i in range(q):
            p, t = torch.from_numpy(preds[i]), torch.from_numpy(target[i])
            ref_rr = float(tmr.retrieval_reciprocal_rank(p, t))  # 1.0.3: no top_k argument
            ref = {
                "recall": float(tmr.retrieval_recall(p, t, top_k=k)),
                "ndcg": float(tmr.retrieval_normalized_dcg(p, t, top_k=k)),
                "hit": float(tmr.retrieval_hit_rate(p, t, top_k=k)),
                "mrr": ref_rr if 1 / ref_rr <= k + 1e-6 else 0.0,
            }
            for name, value in ref.items():
                assert ours[name][i] == pytest.approx(value, abs=1e-6), (name, k, i)


def test_multi_target_rejects_bad_input() -> None:
    ids = np.array([[1, 2], [3, 4]])
    with pytest.raises(RecembError, match="query 1 has no relevant items"):
        M.recall_at_k_multi(ids, [np.array([1]), np.array([], dtype=np.int64)], 2)
    with pytest.raises(RecembError, match="row 0 repeats an item"):
        M.recall_at_k_multi(np.array([[1, 1], [3, 4]]), [np.array([1]), np.array([3])], 2)
    with pytest.raises(RecembError, match="larger than the lists"):
        M.recall_at_k_multi(ids, [np.array([1]), np.array([3])], 3)
    with pytest.raises(RecembError, match="2 rows"):
        M.recall_at_k_multi(ids, [np.array([1])], 2)
    with pytest.raises(RecembError, match="indptr"):
        M.recall_at_k_multi(ids, (np.array([0, 1]), np.array([1])), 2)


# --------------------------------------------------------------------------- impressions


def _mind_dcg(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    """MIND evaluate.py ``dcg_score``, with a stable argsort so that ties are reproducible."""
    order = np.argsort(y_score, kind="stable")[::-1]
    y_true = np.take(y_true, order[:k])
    gains = 2**y_true - 1
    discounts = np.log2(np.arange(len(y_true)) + 2)
    return float(np.sum(gains / discounts))


def _mind_reference(groups, labels, scores, ks=(5, 10)) -> dict[str, float]:
    """MIND's official per-impression loop (``mrr_score``, ``ndcg_score``, sklearn AUC)."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, list[float]] = {"auc": [], "mrr": [], **{f"ndcg@{k}": [] for k in ks}}
    by_group = np.argsort(groups, kind="stable")  # rows of a group keep their file order
    bounds = np.flatnonzero(groups[by_group][1:] != groups[by_group][:-1]) + 1
    for sel in np.split(by_group, bounds):
        y, s = labels[sel].astype(np.float64), scores[sel]
        if y.sum() == 0 or y.sum() == len(y):
            continue
        out["auc"].append(roc_auc_score(y, s))
        order = np.argsort(s, kind="stable")[::-1]
        y_sorted = np.take(y, order)
        out["mrr"].append(float(np.sum(y_sorted / (np.arange(len(y_sorted)) + 1)) / np.sum(y)))
        for k in ks:
            out[f"ndcg@{k}"].append(_mind_dcg(y, s, k) / _mind_dcg(y, y, k))
    return {name: float(np.mean(v)) for name, v in out.items()} | {"n": len(out["auc"])}


def _random_impressions(seed: int, n_groups: int, tie_levels: int | None):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    perm = rng.permutation(len(groups))  # rows of an impression need not be contiguous
    groups = groups[perm]
    labels = rng.random(len(groups)) < 0.15
    if tie_levels is None:
        scores = rng.standard_normal(len(groups))
    else:
        scores = rng.integers(0, tie_levels, len(groups)).astype(np.float64)
    return groups, labels, scores


def test_impression_metrics_by_hand() -> None:
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    labels = np.array([0, 1, 1, 1, 1, 0, 1], dtype=bool)
    scores = np.array([0.9, 0.2, 0.5, 0.3, 0.1, 0.1, 0.8])
    # a: order 0.9(no), 0.5(click), 0.2(click). MRR = (1/2 + 1/3) / 2 = 5/12.
    #    DCG@5 = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3). AUC: both clicks score
    #    below the non-click -> 0.
    # b: all clicked -> skipped. c: click first -> MRR 1, nDCG 1, AUC 1.
    ndcg_a = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    out = M.impression_metrics(groups, labels, scores, ks=(5, 10))
    assert out["auc"] == pytest.approx(0.5)
    assert out["mrr"] == pytest.approx((5 / 12 + 1) / 2)
    assert out["ndcg@5"] == pytest.approx((ndcg_a + 1) / 2)
    assert out["ndcg@10"] == pytest.approx((ndcg_a + 1) / 2)
    assert (out["n_impressions"], out["n_skipped"]) == (2, 1)
    # nDCG@1 for a: the top item is not clicked -> 0; c -> 1.
    assert M.impression_metrics(groups, labels, scores, ks=(1,))["ndcg@1"] == pytest.approx(0.5)


@pytest.mark.parametrize("tie_levels", [None, 3], ids=["no-ties", "heavy-ties"])
def test_impression_metrics_match_mind_official_code(tie_levels) -> None:
    groups, labels, scores = _random_impressions(2, 150, tie_levels)
    ours = M.impression_metrics(groups, labels, scores, ks=(5, 10))
    ref = _mind_reference(groups, labels, scores)
    assert ours["n_impressions"] == ref["n"] and ref["n"] > 100
    for name in ("auc", "mrr", "ndcg@5", "ndcg@10"):
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name


def test_impression_auc_per_impression_equals_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    groups, labels, scores = _random_impressions(3, 200, 4)
    o = M._impression_order(groups, labels, scores)
    auc = M._impression_auc(o)
    for g in range(200):
        sel = groups == g
        if 0 < labels[sel].sum() < sel.sum():
            assert auc[g] == pytest.approx(roc_auc_score(labels[sel], scores[sel]), abs=1e-12)
        else:
            assert np.isnan(auc[g])


def test_ctr_at_k_by_hand() -> None:
    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    labels = np.array([0, 1, 1, 1, 1, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.2, 0.5, 0.3, 0.1, 0.1, 0.8])
    # k=2: impression 0 top-2 = 0.9(no), 0.5(click) -> 1/2; impression 1 -> 2/2;
    # impression 2 (no click at all, still counted) -> 0/2. Mean = 1.5 / 3 = 0.5.
    assert M.ctr_at_k(groups, labels, scores, 2) == pytest.approx(0.5)
    # k=5: denominators min(5, size) = 3, 2, 2 -> (2/3 + 1 + 0) / 3 = 5/9.
    assert M.ctr_at_k(groups, labels, scores, 5) == pytest.approx(5 / 9)


def test_impression_metrics_reject_bad_input() -> None:
    with pytest.raises(RecembError, match="same length"):
        M.impression_metrics(np.array([0, 0]), np.array([True]), np.array([0.1, 0.2]))
    with pytest.raises(RecembError, match="0/1"):
        M.impression_metrics(np.array([0, 0]), np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(RecembError, match=r"scores\[1\] is NaN"):
        M.impression_metrics(np.array([0, 0]), np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(RecembError, match="both a click and a non-click"):
        M.impression_metrics(np.array([0, 0]), np.array([1, 1]), np.array([0.1, 0.2]))


def _mind_subset(root) -> pl.DataFrame:
    """One row per shown item of the MIND subset: impression, news, clicked."""
    path = root / "mind-small-subset" / "behaviors.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    beh = pl.read_csv(
        path,
        separator="\t",
        has_header=False,
        new_columns=["impression_id", "user_id", "time", "history", "impressions"],
        quote_char=None,
    )
    return (
        beh.select("impression_id", pl.col("impressions").str.split(" "))
        .explode("impressions")
        .select(
            "impression_id",
            pl.col("impressions").str.split("-").list.get(0).alias("news"),
            (pl.col("impressions").str.split("-").list.get(1) == "1").alias("clicked"),
        )
    )


def test_impression_metrics_on_real_mind(shared_data) -> None:
    shown = _mind_subset(shared_data)
    assert shown.height == 189_359 and shown["clicked"].sum() == 7_542  # README figures
    groups = shown["impression_id"].to_numpy()
    labels = shown["clicked"].to_numpy()
    # A popularity score (clicks of the news over the file, leaky but fine for a
    # metric check) rounded so that many shown items tie.
    clicks = shown.group_by("news").agg(pl.col("clicked").sum().alias("c"))
    scores = shown.join(clicks, on="news", how="left")["c"].to_numpy().astype(np.float64)
    ours = M.impression_metrics(groups, labels, scores)
    assert ours["n_impressions"] + ours["n_skipped"] == 5_000
    # The reference loop (sklearn AUC at ~2 ms a call) runs on the first 1,500 impressions.
    sub = np.isin(groups, shown["impression_id"].unique(maintain_order=True)[:1500].to_numpy())
    ours = M.impression_metrics(groups[sub], labels[sub], scores[sub])
    ref = _mind_reference(groups[sub], labels[sub], scores[sub])
    assert ours["n_impressions"] == ref["n"] > 1000
    for name in ("auc", "mrr", "ndcg@5", "ndcg@10"):
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name
    # Random scores carry no signal: AUC near 0.5 (std over ~5k impressions ~ 0.004).
    rnd = np.random.default_rng(4).random(len(labels))
    assert M.impression_metrics(groups, labels, rnd)["auc"] == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------------------- beyond accuracy


def test_catalogue_coverage_by_hand() -> None:
    # Items 0, 1, 2 recommended (padding ignored) out of 10 -> 0.3.
    assert M.catalogue_coverage(np.array([[0, 1], [1, 2], [2, -1]]), 10) == pytest.approx(0.3)
    with pytest.raises(RecembError, match=r"topk_ids\[0, 1\] = 10"):
        M.catalogue_coverage(np.array([[0, 10]]), 10)


def test_popularity_bias_by_hand() -> None:
    pop = np.array([10.0, 0.0, 5.0, 5.0])
    # Percentiles, (#less + #equal / 2) / 4: pop 0 -> 0.125, 5 -> (1 + 1) / 4 = 0.5,
    # 10 -> (3 + 0.5) / 4 = 0.875.
    # Lists [0, 2] and [1, pad]: ARP = ((10 + 5) / 2 + 0) / 2 = 3.75;
    # percentile = ((0.875 + 0.5) / 2 + 0.125) / 2 = 0.40625.
    out = M.popularity_bias(np.array([[0, 2], [1, -1]]), pop)
    assert out["arp"] == pytest.approx(3.75)
    assert out["mean_pop_percentile"] == pytest.approx(0.40625)
