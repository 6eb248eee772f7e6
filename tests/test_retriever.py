"""Retriever: query vectors, filtering, popularity fallback, blending with quotas (issue #5, item 2)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.index.annoy_index import AnnoyIndex
from recemb.index.exact import ExactIndex
from recemb.retrieval.covisit import CoVisitTable
from recemb.retrieval.retriever import Retriever
from recemb.retrieval.sources import CoVisitSource, EmbeddingSource

N, D = 300, 8


def vectors(n: int = N, d: int = D, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    return (centres[rng.integers(0, 12, n)] + 0.4 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def items() -> EmbeddingSet:
    return EmbeddingSet([f"i{r}" for r in range(N)], vectors(), kind="item2vec")


@pytest.fixture(scope="module")
def retriever(items) -> Retriever:
    pop = [f"i{r}" for r in range(N - 1, -1, -1)]  # i299 is the most popular
    return Retriever(
        {"a": (items, ExactIndex().build(items.vectors))},
        popularity=pop,
        query="mean_last_n",
        last_n=3,
    )


@pytest.fixture(scope="module")
def two_sources(items) -> Retriever:
    # Source b knows only the first 200 items, with different vectors (another model).
    b = EmbeddingSet(items.ids[:200].tolist(), vectors(200, D, seed=1), kind="two_tower_items")
    return Retriever(
        {
            "a": (items, ExactIndex().build(items.vectors)),
            "b": EmbeddingSource(b, ExactIndex().build(b.vectors)),
        },
        popularity=[f"i{r}" for r in range(N)],
    )


def random_histories(n_users: int, seed: int = 0, high: int = N) -> list[list[str]]:
    """Histories of 1-14 items drawn from ``i0 .. i{high-1}``."""
    rng = np.random.default_rng(seed)
    return [[f"i{r}" for r in rng.integers(0, high, rng.integers(1, 15))] for _ in range(n_users)]


def test_query_vector_is_the_mean_of_the_last_n_unit_vectors(retriever, items):
    history = ["i5", "i6", "i7", "i8", "i9"]
    x = items.vectors / np.linalg.norm(items.vectors, axis=1, keepdims=True)
    q = x[[7, 8, 9]].mean(axis=0)  # last_n=3
    scores = x @ (q / np.linalg.norm(q))
    scores[[5, 6, 7, 8, 9]] = -np.inf  # seen
    want = [f"i{r}" for r in np.argsort(-scores, kind="stable")[:10]]
    got = retriever.recommend(history, 10)
    assert [g[0] for g in got] == want
    np.testing.assert_allclose([g[1] for g in got], np.sort(scores)[::-1][:10], rtol=1e-5)
    assert {g[2] for g in got} == {"a"}


@pytest.mark.parametrize("mode", ["last", "mean", "mean_last_n", "recency"])
def test_query_modes(items, mode):
    r = Retriever({"a": (items, ExactIndex().build(items.vectors))}, query=mode, last_n=2)
    x = items.vectors / np.linalg.norm(items.vectors, axis=1, keepdims=True)
    hist = [3, 40, 41, 42]
    w = {
        "last": [0, 0, 0, 1],
        "mean": [1, 1, 1, 1],
        "mean_last_n": [0, 0, 1, 1],
        "recency": [1 / 4, 1 / 3, 1 / 2, 1],
    }[mode]
    q = (np.array(w)[:, None] * x[hist]).sum(0)
    scores = x @ q
    scores[hist] = -np.inf
    want = [f"i{i}" for i in np.argsort(-scores, kind="stable")[:5]]
    # An unknown item in the history is skipped, not counted as a position.
    assert [t[0] for t in r.recommend(["i3", "i40", "nope", "i41", "i42"], 5)] == want


def test_seen_excluded_and_blocked_never_returned(retriever):
    hists = random_histories(200)
    blocked = [f"i{r}" for r in range(0, N, 7)]
    extra = [[f"i{r}" for r in range(u % 5, 30, 5)] for u in range(200)]
    df = retriever.recommend_batch(hists, 20, exclude=extra, blocked=blocked)
    assert df.group_by("row").len()["len"].to_list() == [20] * 200
    seen = pl.DataFrame({"row": range(200), "item_id": [h + e for h, e in zip(hists, extra)]}).explode("item_id")
    assert df.join(seen.with_columns(pl.col("row").cast(pl.Int64)), on=["row", "item_id"]).height == 0
    assert not df["item_id"].is_in(blocked).any()
    assert df.select(pl.struct("row", "item_id").is_duplicated().any()).item() is False
    # ranks are 1..k per user
    assert df.group_by("row").agg(pl.col("rank").sort())["rank"].to_list() == [list(range(1, 21))] * 200


def test_popularity_fallback_for_unknown_users_and_items(retriever):
    expected = [f"i{r}" for r in range(N - 1, N - 7, -1)]
    got = retriever.recommend([], 5)
    assert [(t[0], t[2]) for t in got] == [(e, "popularity") for e in expected[:5]]
    np.testing.assert_allclose([t[1] for t in got], [1 / (1 + i) for i in range(5)], rtol=1e-6)
    got = retriever.recommend(["unknown1", "unknown2"], 5, blocked=["i299"], exclude=["i297"])
    assert [t[0] for t in got] == ["i298", "i296", "i295", "i294", "i293"]
    assert {t[2] for t in got} == {"popularity"}
    assert [t[0] for t in retriever.similar_items("never-seen", 3)] == ["i299", "i298", "i297"]


def test_top_up_when_the_catalogue_runs_out(items):
    small = EmbeddingSet(["x", "y", "z"], np.eye(3, 4, dtype=np.float32), kind="t")
    r = Retriever({"s": (small, ExactIndex().build(small.vectors))}, popularity=["p1", "x", "p2"])
    got = r.recommend(["x"], 5)
    assert [t[0] for t in got] == ["y", "z", "p1", "p2"]  # x is seen; then only popularity is left
    assert [t[2] for t in got] == ["s", "s", "popularity", "popularity"]


def test_quotas_respected_when_blending_two_sources(two_sources):
    hists = random_histories(100, seed=3, high=200)  # items both sources know
    for quotas, want in [
        ({"a": 7, "b": 3}, {"a": 7, "b": 3}),
        ({"a": 0.2, "b": 0.8}, {"a": 2, "b": 8}),
    ]:
        df = two_sources.recommend_batch(hists, 10, quotas=quotas)
        counts = df.group_by("row", "source").len().pivot(on="source", index="row", values="len").fill_null(0)
        assert (counts["a"] == want["a"]).all() and (counts["b"] == want["b"]).all(), quotas
        assert df.select(pl.struct("row", "item_id").is_duplicated().any()).item() is False
        # interleaved by pick rank: the first two items come from a then b
        assert df.filter(pl.col("rank") <= 2).sort("row", "rank")["source"].to_list()[:2] == [
            "a",
            "b",
        ]
    even = two_sources.quotas_for(9, None)  # k split evenly, the first source gets the odd one
    assert even == {"a": 5, "b": 4}
    c = two_sources.recommend_batch(hists, 9, quotas=even).group_by("source").len().sort("source")["len"].to_list()
    assert c == [500, 400]
    # Without quotas the sources are fused with equal weights.
    fused = Retriever(two_sources.sources, popularity=two_sources.popularity, weights={"a": 1.0, "b": 1.0})
    assert two_sources.recommend_batch(hists, 9).equals(fused.recommend_batch(hists, 9))


def test_quota_leftover_filled_from_the_other_source(two_sources):
    # Items i200.. are unknown to b: with a history of only those, b has no query and a fills all k.
    got = two_sources.recommend(["i250", "i251"], 6, quotas={"a": 2, "b": 4})
    assert [t[2] for t in got] == ["a"] * 6
    with pytest.raises(RecembError, match="unknown sources"):
        two_sources.recommend(["i1"], 5, quotas={"c": 1})


def test_similar_items_never_returns_the_item_itself(items):
    ann = AnnoyIndex("cosine", n_trees=5, n_jobs=1).build(items.vectors)
    for index in (ExactIndex().build(items.vectors), ann):
        r = Retriever({"a": (items, index)}, popularity=items.ids.tolist())
        for i in range(0, N, 10):
            got = r.similar_items(f"i{i}", 10)
            assert len(got) == 10 and f"i{i}" not in [t[0] for t in got]


def test_one_request_gets_exactly_its_row_of_the_batch(items):
    """The online call (``answer``) and the batch job (``recommend_batch``) share one core: over
    random histories (with unknown ids), exclusions, blocked items, quotas, user ids and query modes,
    with an Annoy source, an exact dot source with user vectors and a co-visitation source."""
    rng = np.random.default_rng(0)
    b = EmbeddingSet([f"i{r}" for r in range(200)], rng.normal(size=(200, D)).astype(np.float32), kind="tt")
    users = EmbeddingSet([f"u{r}" for r in range(50)], rng.normal(size=(50, D)).astype(np.float32), kind="tt_u")
    events = pl.DataFrame(
        {
            "user_id": [f"s{s}" for s in rng.integers(0, 400, 3000)],
            "item_id": [f"i{r}" for r in rng.integers(0, N, 3000)],
        }
    )
    r = Retriever(
        {
            "a": (items, AnnoyIndex(n_trees=10, n_jobs=1).build(items.vectors)),
            "b": EmbeddingSource(b, ExactIndex("dot").build(b.vectors), users),
            "co": CoVisitSource(CoVisitTable.build(events, unit="user", top=20)),
        },
        popularity=[f"i{x}" for x in rng.permutation(N + 20)],
        query="recency",
        last_n=3,
    )
    for t in range(40):
        n = 25
        hists = [[f"i{x}" for x in rng.integers(0, N + 20, rng.integers(0, 8))] for _ in range(n)]
        excl = [[f"i{x}" for x in rng.integers(0, N, rng.integers(0, 4))] for _ in range(n)]
        blocked = [f"i{x}" for x in rng.integers(0, N, rng.integers(0, 3))]
        user_ids = [f"u{x}" for x in rng.choice(80, n, replace=False)]  # u50.. unknown to b
        k = int(rng.integers(1, 40))
        quotas = [None, {"a": 2, "b": 0.5, "co": 3}, {"co": k}][t % 3]
        mode = [None, "last", "mean", "mean_last_n"][t % 4]
        df = r.recommend_batch(hists, k, exclude=excl, blocked=blocked, quotas=quotas, user_ids=user_ids, query=mode)
        for u in range(n):
            one = r.recommend(
                hists[u], k, exclude=excl[u], blocked=blocked, quotas=quotas, user_id=user_ids[u], query=mode
            )
            rows = df.filter(pl.col("user_id") == user_ids[u])
            assert [(i, s) for i, _, s in one] == list(zip(rows["item_id"], rows["source"])), (t, u)
            np.testing.assert_allclose([x[1] for x in one], rows["score"].to_numpy(), rtol=1e-6)
            assert not ({i for i, _, _ in one} & (set(hists[u]) | set(excl[u]) | set(blocked)))
    assert df.equals(
        r.recommend_batch(hists, k, exclude=excl, blocked=blocked, quotas=quotas, user_ids=user_ids, query=mode)
    )


def test_user_vectors_are_the_query_for_known_users(items):
    users = EmbeddingSet(["u1"], items.vectors[[10]] * 3.0, kind="two_tower_users")
    r = Retriever(
        {"tt": EmbeddingSource(items, ExactIndex("dot").build(items.vectors), users=users)},
        popularity=["i0"],
    )
    df = r.recommend_batch([[], ["i10"]], 5, user_ids=["u1", "u2"])
    assert df.columns == ["user_id", "rank", "item_id", "score", "source"]
    u1 = df.filter(pl.col("user_id") == "u1")
    u2 = df.filter(pl.col("user_id") == "u2")
    # u1 has no history but a user vector; u2 is unknown to the user set and uses its history.
    scores = items.vectors @ items.vectors[10]
    want_u1 = [f"i{i}" for i in np.argsort(-scores, kind="stable")[:5]]
    assert u1["item_id"].to_list() == want_u1 and set(u1["source"]) == {"tt"}
    assert "i10" not in u2["item_id"].to_list()


def test_bad_arguments_raise_clear_errors(items, retriever):
    with pytest.raises(RecembError, match="query must be one of"):
        Retriever({"a": (items, ExactIndex().build(items.vectors))}, query="median")
    with pytest.raises(RecembError, match="export the index from this EmbeddingSet"):
        Retriever({"a": (items, ExactIndex().build(items.vectors[:10]))})
    with pytest.raises(RecembError, match="k must be"):
        retriever.recommend(["i1"], 0)
    with pytest.raises(RecembError, match="one per user"):
        retriever.recommend_batch([["i1"]], 3, user_ids=["a", "b"])


def test_real_movielens_candidates(shared_data):
    """ML-100K: random projections of the item x user incidence as a stand-in EmbeddingSet.

    Cosine between such vectors approximates co-occurrence cosine; every user gets k unseen items.
    """
    path = shared_data / "ml-100k" / "u.data"
    if not path.exists():
        pytest.skip(f"{path} not found")
    ev = pl.read_csv(path, separator="\t", has_header=False, new_columns=["user", "item", "rating", "ts"])
    ev = ev.with_columns(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String)).sort("user", "ts", "item")
    items_ = ev["item"].unique().sort()
    users_ = ev["user"].unique().sort()
    ui = np.zeros((len(users_), len(items_)), dtype=np.float32)
    u_idx = ev.join(pl.DataFrame({"user": users_}).with_row_index("u"), on="user")["u"].to_numpy()
    i_idx = ev.join(pl.DataFrame({"item": items_}).with_row_index("i"), on="item")["i"].to_numpy()
    ui[u_idx, i_idx] = 1.0
    proj = np.random.default_rng(0).normal(size=(len(users_), 32)).astype(np.float32)
    emb = EmbeddingSet(items_.to_list(), ui.T @ proj, kind="random_projection")
    pop = ev.group_by("item").len().sort(["len", "item"], descending=[True, False])["item"].to_list()
    hist = ev.group_by("user", maintain_order=True).agg("item")
    r = Retriever({"rp": (emb, AnnoyIndex("cosine", n_trees=10, n_jobs=1).build(emb.vectors))}, popularity=pop)
    df = r.recommend_batch(hist["item"].to_list(), 20, user_ids=hist["user"].to_list())
    assert df.height == 20 * len(hist)
    seen = hist.explode("item").rename({"user": "user_id", "item": "item_id"})
    assert df.join(seen, on=["user_id", "item_id"]).height == 0


def test_weighted_reciprocal_rank_fusion_by_hand():
    from recemb.retrieval.blend import RRF_K, blend

    a = (np.array(["x", "y", "z"], dtype=object), np.array([3.0, 2.0, 1.0]))
    b = (np.array(["z", "w"], dtype=object), np.array([5.0, 4.0]))
    got = blend([("a", a), ("b", b)], 3, {"a": 2, "b": 1}, frozenset({"y"}), frozenset(), ["p"], {"a": 1.0, "b": 2.0})
    # a (y excluded): x rank 1, z rank 2; b: z rank 1, w rank 2.
    want = {
        "z": 1 / (RRF_K + 2) + 2 / (RRF_K + 1),
        "w": 2 / (RRF_K + 2),
        "x": 1 / (RRF_K + 1),
    }
    order = sorted(want, key=lambda i: -want[i])
    assert [h[0] for h in got.hits] == order
    np.testing.assert_allclose([h[1] for h in got.hits], [want[i] for i in order], rtol=1e-6)
    assert dict((h[0], h[2]) for h in got.hits) == {"z": "b", "w": "b", "x": "a"}  # the larger contribution
    # A source with weight 0 takes no part; places left go to popularity.
    only_a = blend([("a", a), ("b", b)], 4, {"a": 2, "b": 2}, frozenset(), frozenset(), ["p"], {"a": 1.0, "b": 0.0})
    assert [h[0] for h in only_a.hits] == ["x", "y", "z", "p"]
    one = EmbeddingSet(["q"], np.ones((1, 2), np.float32), kind="t")
    for bad in ({"b": 1.0}, {"a": 0.0}, {"a": float("nan")}, {"a": -1.0}):
        with pytest.raises(RecembError, match="weights"):
            Retriever({"a": (one, ExactIndex().build(one.vectors))}, weights=bad)
