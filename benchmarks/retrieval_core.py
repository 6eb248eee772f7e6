"""The one retrieval core against the index alone: what filtering and blending cost, online and batch.

Question (issue 16, item 1): the Retriever answers the online service one user
at a time (:meth:`Retriever.answer`) and the batch job B users at a time
(:meth:`Retriever.recommend_batch`) with the same blending core. What does it
add over the bare index search it wraps, and is the online call within 0.2 ms?

Peers, on the same queries in the same run:

* ``index.search`` alone: one query per call (online) or all queries in one
  call (batch), k = the Retriever's widest search (k + history, bucketed);
* the Retriever over that one index (query pooling, exclusion, blend, top-up);
* the Retriever over the index plus a co-visitation source (two sources blended
  by quota and by weighted reciprocal rank).

Data: ``--items`` clustered vectors of ``--dim`` (cosine) in an Annoy index
(50 trees), ``--users`` histories of 5-40 items from one cluster; co-visitation
from the same histories as sessions. Prints per-call microseconds (median and
p99 of single calls) and users/s of the batch path, with ratios to the index.

Run::

    .venv/bin/python benchmarks/retrieval_core.py                # ~1 min on 2 shared cores
    .venv/bin/python benchmarks/retrieval_core.py --items 100000 --users 20000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from recemb.embeddings import EmbeddingSet
from recemb.index.annoy_index import AnnoyIndex
from recemb.retrieval.covisit import CoVisitTable
from recemb.retrieval.retriever import Retriever
from recemb.retrieval.sources import CoVisitSource, EmbeddingSource


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors [n, dim] float32, cluster [n])``."""
    centres = rng.normal(size=(clusters, dim))
    cluster = rng.integers(0, clusters, n)
    return (centres[cluster] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32), cluster


def histories(n_users: int, cluster: np.ndarray, rng: np.random.Generator) -> list[list[str]]:
    by_cluster = pl.DataFrame({"row": np.arange(len(cluster)), "c": cluster}).group_by("c").agg("row")
    members = dict(zip(by_cluster["c"].to_list(), by_cluster["row"].to_list()))
    out = []
    for _ in range(n_users):
        pool = members[int(rng.integers(0, len(members)))]
        out.append([f"i{pool[j]}" for j in rng.integers(0, len(pool), rng.integers(5, 41))])
    return out


def time_single(fn, calls: list, repeat: int = 1) -> tuple[float, float]:
    """Median and p99 microseconds of ``fn(call)`` over ``calls``."""
    took = []
    for _ in range(repeat):
        for c in calls:
            t0 = time.perf_counter()
            fn(c)
            took.append(time.perf_counter() - t0)
    us = np.asarray(took) * 1e6
    return float(np.median(us)), float(np.percentile(us, 99))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--single", type=int, default=2_000, help="single calls timed (online rows)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    rng = np.random.default_rng(a.seed)
    vectors, cluster = clustered(a.items, a.dim, max(10, a.items // 200), rng)
    ids = [f"i{r}" for r in range(a.items)]
    items = EmbeddingSet(ids, vectors, kind="bench")
    t0 = time.perf_counter()
    index = AnnoyIndex("cosine", n_trees=50).build(vectors)
    print(f"annoy: {a.items} x {a.dim}, 50 trees, built in {time.perf_counter() - t0:.1f}s")
    hists = histories(a.users, cluster, rng)
    sessions = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u, h in enumerate(hists) for _ in h],
            "item_id": [x for h in hists for x in h],
        }
    )
    t0 = time.perf_counter()
    table = CoVisitTable.build(sessions, unit="user", top=100)
    print(f"co-visitation: {len(table)} items, top 100, built in {time.perf_counter() - t0:.1f}s\n")
    emb = EmbeddingSource(items, index)
    retrievers = {
        "Retriever (annoy)": Retriever({"annoy": emb}, popularity=ids[:1000]),
        "Retriever (annoy + covisit, quotas)": Retriever(
            {"covisit": CoVisitSource(table), "annoy": emb}, popularity=ids[:1000]
        ),
        "Retriever (annoy + covisit, fusion)": Retriever(
            {"covisit": CoVisitSource(table), "annoy": emb},
            popularity=ids[:1000],
            weights={"covisit": 1.0, "annoy": 1.0},
        ),
    }
    k = a.k
    # The index alone, searched as wide as the Retriever searches (k + seen items, power-of-two buckets).
    have, queries = emb.queries(hists, None, "mean_last_n", 5)
    want = np.asarray([k + len(set(h)) for h in hists])
    bucket = 2 ** np.ceil(np.log2(want)).astype(int)
    single = list(range(min(a.single, a.users)))

    rows = []
    med, p99 = time_single(lambda u: index.search(queries[u : u + 1], int(bucket[u])), single)
    t0 = time.perf_counter()
    for kk in np.unique(bucket):
        index.search(queries[bucket == kk], int(kk))
    base_batch = a.users / (time.perf_counter() - t0)
    rows.append(("index.search alone", med, p99, base_batch))
    for name, r in retrievers.items():
        med, p99 = time_single(lambda u, r=r: r.answer(hists[u], k), single)
        t0 = time.perf_counter()
        for lo in range(0, a.users, 1024):
            r.recommend_batch(hists[lo : lo + 1024], k)
        rows.append((name, med, p99, a.users / (time.perf_counter() - t0)))

    base_med = rows[0][1]
    print(f"{'path':40s} {'online p50 us':>14s} {'p99 us':>9s} {'x index':>8s} {'batch users/s':>14s} {'x index':>8s}")
    for name, med, p99, ups in rows:
        print(f"{name:40s} {med:14.0f} {p99:9.0f} {med / base_med:8.2f} {ups:14,.0f} {base_batch / ups:8.2f}")
    print(
        f"\nk = {k}, histories of 5-40 items (seen items excluded), {len(single)} single calls, {a.users} batch users"
    )


if __name__ == "__main__":
    main()
