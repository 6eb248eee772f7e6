"""ANN recall vs speed: recemb's Annoy and HNSW indexes against exact search and peers (issue #5, #16).

Question: at what search_k (Annoy) or ef (HNSW) does recemb reach recall@10
>= 0.95 on 1M vectors of dim 64, and how many times faster than exact search
is it there (target: >= 20x, HNSW build <= 4 min on 2 cores)? recemb's HNSW
rows also show the ef_factor ``recemb export`` would certify, and the cost of
excluding a user's seen items inside the search against over-fetching.
Peers in the same run: hnswlib (HNSW) and faiss-cpu (IVF-Flat), if installed
(``pip install hnswlib faiss-cpu``); a missing peer is skipped with a note.

Data: clustered synthetic vectors (a Gaussian mixture, one cluster per
~1000 vectors) with held-out queries drawn from the same mixture, and any
trained EmbeddingSet passed with ``--embeddings`` (queries = a sample of its
own item vectors, or with ``--events`` the pooled last 5 items of real
sessions: what the service is asked). Metric: cosine.

Also recemb's compressed exact backend (``export.backend: exact``,
``export.codec``): float16 and int8 (per-row scale) codes searched blockwise,
with and without a float32 re-rank of the best 100 (``--codecs``, ``--rerank``);
its size is the codes' (the float32 vectors stay on disk for the re-rank).

Columns: build seconds (all cores), index size in MB (the file Annoy
mmaps; in-memory size for peers), recall@10 against exact, queries/s with
ONE query thread (exact and compressed: batched over all queries, all
cores) and speed-up over exact.

Run::

    .venv/bin/python benchmarks/ann.py --sizes 100000             # ~1 min
    .venv/bin/python benchmarks/ann.py --sizes 100000 1000000     # ~10 min on 2 cores, ~3 GB RAM
    .venv/bin/python benchmarks/ann.py --sizes 20000 --embeddings runs/quick/item2vec/embeddings
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recemb.index.annoy_index import AnnoyIndex
from recemb.index.exact import ExactIndex
from recemb.index.export import certify_recall
from recemb.index.hnsw_index import HnswIndex
from recemb.index.quantized import QuantizedIndex
from recemb.vectors import l2_normalize

K = 10


def mixture(n: int, d: int, seed: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, d]`` items and ``[n_queries, d]`` queries from one Gaussian mixture (float32)."""
    rng = np.random.default_rng(seed)
    clusters = max(10, n // 1000)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    # Within-cluster spread comparable to the centre distance: neighbours are
    # mostly, not all, in the query's cluster (harder than well-separated blobs).
    spread = rng.uniform(0.5, 1.0, size=clusters).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, clusters, m)
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 1 << 17):
            cc = c[s : s + (1 << 17)]
            out[s : s + len(cc)] = centres[cc] + spread[cc, None] * rng.standard_normal((len(cc), d), dtype=np.float32)
        return out

    return draw(n), draw(n_queries)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / K over queries; both ``[B, K]`` rows."""
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1).mean() / truth.shape[1])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(name: str, x: np.ndarray, q: np.ndarray, args) -> list[tuple]:
    """Rows ``(data, method, params, build_s, size_mb, recall, qps, speedup)`` for one data set."""
    rows: list[tuple] = []
    n, d = x.shape
    exact = ExactIndex("cosine").build(x)
    exact.search(q[:8], K)  # warm BLAS
    (truth, _), t = timed(lambda: exact.search(q, K))
    exact_qps = len(q) / t
    rows.append((name, "exact (numpy BLAS)", "", 0.0, x.nbytes / 2**20, 1.0, exact_qps, 1.0))
    print(f"  exact: {exact_qps:,.0f} q/s", flush=True)

    # Compressed exact search (recemb.index.quantized): codes in memory, float32 re-rank of the best `rerank`.
    for codec in args.codecs:
        for rr in args.rerank:
            qi, t_build = timed(lambda c=codec, r=rr: QuantizedIndex("cosine", c, rerank=r).build(x))
            assert qi.scales is None or qi.scales.dtype == np.float32
            size = (qi._x.nbytes + (0 if qi.scales is None else qi.scales.nbytes)) / 2**20
            (found, _), t = timed(lambda i=qi: i.search(q, K))
            r, qps = recall(found, truth), len(q) / t
            rows.append((name, f"exact {codec}", f"rerank={rr}", t_build, size, r, qps, qps / exact_qps))
            print(f"  exact {codec} rerank={rr}: recall {r:.3f}, {size:.0f} MB, {qps:,.0f} q/s", flush=True)
            del qi

    with tempfile.TemporaryDirectory() as tmp:
        for n_trees in args.n_trees:
            path = Path(tmp) / f"items_{n_trees}.ann"
            ann, t_build = timed(
                lambda t=n_trees, f=path: AnnoyIndex("cosine", n_trees=t, n_jobs=-1, seed=0).build(x, on_disk=f)
            )
            size = path.stat().st_size / 2**20
            for search_k in args.search_k:
                ann.search_k = search_k * n_trees if args.search_k_per_tree else search_k
                (found, _), t = timed(lambda a=ann: a.search(q, K))
                r, qps = recall(found, truth), len(q) / t
                rows.append(
                    (
                        name,
                        "annoy",
                        f"trees={n_trees} search_k={ann.search_k}",
                        t_build,
                        size,
                        r,
                        qps,
                        qps / exact_qps,
                    )
                )
                print(
                    f"  annoy trees={n_trees} search_k={ann.search_k}: recall {r:.3f}, {qps:,.0f} q/s",
                    flush=True,
                )
            ann.unload()

    rows += bench_recemb_hnsw(name, x, q, truth, exact_qps, args)
    xu, qu = l2_normalize(x), l2_normalize(q)
    if args.no_peers:
        return rows
    if importlib.util.find_spec("hnswlib"):
        import hnswlib

        h = hnswlib.Index("cosine", d)

        def build_h():
            h.init_index(n, M=args.hnsw_m, ef_construction=args.hnsw_efc, random_seed=0)
            h.set_num_threads(os.cpu_count() or 1)
            h.add_items(xu, np.arange(n))

        _, t_build = timed(build_h)
        h.set_num_threads(1)
        size = (n * (d * 4 + args.hnsw_m * 2 * 4 + 16)) / 2**20  # vectors + level-0 links, approx.
        for ef in args.hnsw_ef:
            h.set_ef(max(ef, K))
            (found, _), t = timed(lambda: h.knn_query(qu, K))
            r, qps = recall(found.astype(np.int64), truth), len(q) / t
            rows.append(
                (
                    name,
                    "hnswlib",
                    f"M={args.hnsw_m} efC={args.hnsw_efc} ef={ef}",
                    t_build,
                    size,
                    r,
                    qps,
                    qps / exact_qps,
                )
            )
            print(f"  hnswlib ef={ef}: recall {r:.3f}, {qps:,.0f} q/s", flush=True)
        del h
    else:
        print("  hnswlib not installed: skipped (pip install hnswlib)")
    if importlib.util.find_spec("faiss"):
        import faiss

        nlist = max(16, int(4 * np.sqrt(n)))
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)

        def build_f():
            ivf.train(xu[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
            ivf.add(xu)

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        _, t_build = timed(build_f)
        faiss.omp_set_num_threads(1)
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            (_, found), t = timed(lambda: ivf.search(qu, K))
            r, qps = recall(found, truth), len(q) / t
            rows.append(
                (
                    name,
                    "faiss IVF-Flat",
                    f"nlist={nlist} nprobe={nprobe}",
                    t_build,
                    xu.nbytes / 2**20,
                    r,
                    qps,
                    qps / exact_qps,
                )
            )
            print(f"  faiss nprobe={nprobe}: recall {r:.3f}, {qps:,.0f} q/s", flush=True)
        del ivf
    else:
        print("  faiss-cpu not installed: skipped (pip install faiss-cpu)")
    return rows


def bench_recemb_hnsw(name: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, exact_qps: float, args) -> list:
    """recemb's HNSW backend (``export.backend: hnsw``): build, the ef_factor export would certify,
    recall/speed per ef_factor, and per-query exclusion inside the search against over-fetching."""
    rows: list[tuple] = []
    index, t_build = timed(
        lambda: HnswIndex("cosine", m=args.hnsw_m, ef_construction=args.hnsw_efc, threads=-1, seed=0).build(x)
    )
    index.threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "items.hnsw")
        size = (Path(tmp) / "items.hnsw").stat().st_size / 2**20
    cert = certify_recall(index, x, 0.95, knob="ef_factor")
    print(
        f"  recemb hnsw m={args.hnsw_m} efC={args.hnsw_efc}: built in {t_build:.0f}s, {size:.0f} MB; export would "
        f"certify ef_factor {cert['ef_factor']:g} (held-out recall@10 {cert['recall']:.3f})",
        flush=True,
    )
    params = f"m={args.hnsw_m} efC={args.hnsw_efc}"
    for factor in args.hnsw_ef_factors:
        index.ef_factor = factor
        index.search(q[:8], K)
        (found, _), t = timed(lambda: index.search(q, K))
        r, qps = recall(found, truth), len(q) / t
        mark = " (certified)" if factor == cert["ef_factor"] else ""
        rows.append(
            (name, "recemb hnsw", f"{params} ef_factor={factor:g}{mark}", t_build, size, r, qps, qps / exact_qps)
        )
        print(f"  recemb hnsw ef_factor={factor:g}: recall {r:.3f}, {qps:,.0f} q/s", flush=True)
    if args.exclude:
        # A user's seen items: `exclude` random rows per query, skipped inside the walk vs fetched and dropped.
        index.ef_factor = cert["ef_factor"]
        rng = np.random.default_rng(args.seed)
        skip = [rng.choice(len(x), args.exclude, replace=False) for _ in range(len(q))]
        _, t_in = timed(lambda: index.search(q, K, exclude=skip))
        _, t_over = timed(lambda: index.search(q, K + args.exclude))
        for how, t in (("inside the search", t_in), (f"over-fetch k+{args.exclude}", t_over)):
            rows.append(
                (
                    name,
                    "recemb hnsw",
                    f"exclude {args.exclude}: {how}",
                    t_build,
                    size,
                    float("nan"),
                    len(q) / t,
                    len(q) / t / exact_qps,
                )
            )
            print(f"  recemb hnsw exclude {args.exclude} {how}: {len(q) / t:,.0f} q/s", flush=True)
    return rows


def history_queries(emb, events_path: Path, n: int, seed: int) -> np.ndarray:
    """``[n, D]`` real queries: the last 5 known items of ``n`` random sessions (users when events have
    no sessions) of an events table, their unit vectors averaged (``mean_last_n``, what serving asks)."""
    import polars as pl

    events = pl.read_parquet(events_path)
    unit = "session_id" if "session_id" in events.columns and events["session_id"].null_count() == 0 else "user_id"
    rows_of = dict(zip(emb.ids.tolist(), range(len(emb))))
    lists = events.sort("ts").group_by(unit, maintain_order=True).agg(pl.col("item_id"))["item_id"].to_list()
    histories = [r for h in lists if (r := [rows_of[i] for i in h if i in rows_of][-5:])]
    pick = np.random.default_rng(seed).choice(len(histories), min(n, len(histories)), replace=False)
    x = l2_normalize(np.asarray(emb.vectors, dtype=np.float32))
    return np.stack([x[histories[i]].mean(axis=0) for i in pick]).astype(np.float32)


def print_table(rows: list[tuple]) -> None:
    head = ("data", "method", "params", "build s", "size MB", "recall@10", "q/s", "x exact")
    fmt = "| {:<14} | {:<18} | {:<32} | {:>8} | {:>8} | {:>9} | {:>9} | {:>7} |"
    print(fmt.format(*head))
    print("|" + "|".join("-" * (w + 2) for w in (14, 18, 32, 8, 8, 9, 9, 7)) + "|")
    for data, method, params, b, size, r, qps, sp in rows:
        print(
            fmt.format(
                data,
                method,
                params,
                f"{b:.1f}",
                f"{size:.0f}",
                f"{r:.3f}",
                f"{qps:,.0f}",
                f"{sp:.1f}",
            )
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="synthetic sizes (none: skip)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--n-trees", type=int, nargs="+", default=[50])
    p.add_argument("--search-k", type=int, nargs="+", default=[500, 2000, 5000, 10000, 20000, 50000])
    p.add_argument("--search-k-per-tree", action="store_true", help="read --search-k as multiples of n_trees")
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--hnsw-efc", type=int, default=100)
    p.add_argument("--hnsw-ef", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--hnsw-ef-factors", type=float, nargs="+", default=[1, 2, 4, 8], help="recemb hnsw: ef = f x k")
    p.add_argument("--exclude", type=int, default=50, help="recemb hnsw: excluded rows per query (0: skip)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--embeddings", type=Path, nargs="*", default=[], help="trained EmbeddingSet directories")
    p.add_argument("--events", type=Path, help="with --embeddings: query with pooled real histories of these events")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--codecs", nargs="*", default=["float16", "int8"], help="compressed exact indexes to measure")
    p.add_argument("--rerank", type=int, nargs="+", default=[0, 100], help="float32 re-rank depths of those")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rows: list[tuple] = []
    for n in args.sizes:
        name = f"mixture {n // 1000}k"
        print(f"{name} x {args.dim}:", flush=True)
        x, q = mixture(n, args.dim, args.seed, args.queries)
        rows += bench(name, x, q, args)
        del x, q
    for emb_dir in args.embeddings:
        from recemb.embeddings import EmbeddingSet

        emb = EmbeddingSet.load(emb_dir)
        x = np.ascontiguousarray(emb.vectors, dtype=np.float32)
        if args.events:
            queries, what = history_queries(emb, args.events, args.queries, args.seed), "pooled histories"
        else:
            sample = np.random.default_rng(args.seed).choice(len(x), min(args.queries, len(x)), replace=False)
            queries, what = x[sample], "own vectors"
        print(f"{emb.kind} {len(x)} x {emb.dim} ({emb_dir}), queries: {what}:", flush=True)
        rows += bench(f"{emb.kind} {len(x) // 1000}k", x, queries, args)
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
