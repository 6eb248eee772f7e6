"""Batch candidate generation: users/s of the Ray Data job on 1 and 2 workers (issue #5, item 4).

Question: what does the batch job cost or gain over the obvious peer, a
plain single-process loop over the same :class:`~recemb.retrieval.retriever.Retriever`
(``recommend_batch`` over all users in batches, results kept in memory, no
Ray, no files)? The job adds partitioning, Parquet writes and, with Ray,
actor start-up and scheduling; its workers run in parallel.

Data: a synthetic run made here (nothing from ``runs/`` is touched):
``--items`` clustered item vectors of ``--dim`` (cosine), exported to Annoy
(50 trees), and ``--users`` users with 5-40 history items each, drawn
mostly from one cluster. All rows use the same Retriever settings
(query = mean of the last 5, exclude seen, k = ``--k``).

Columns: wall seconds of the whole call (for the jobs: reading events,
building queries, start-up, writes), users/s over that wall time, and the
ratio to the plain loop. Ray is started once before the Ray rows (its
start-up is not counted; actor start-up is).

Run::

    .venv/bin/python benchmarks/candidates.py                       # ~1-2 min on 2 shared cores
    .venv/bin/python benchmarks/candidates.py --users 100000 --items 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from recemb.config import build_config
from recemb.data import schema
from recemb.embeddings import EmbeddingSet
from recemb.index.export import export_all, load_index
from recemb.retrieval.candidates import (
    CandidatesConfig,
    generate_candidates,
    popularity,
    production_queries,
)
from recemb.retrieval.retriever import Retriever


def make_run(root: Path, users: int, items: int, dim: int, seed: int = 0):
    """Write events, an item EmbeddingSet and its Annoy index under ``root``; return the config."""
    rng = np.random.default_rng(seed)
    clusters = max(10, items // 500)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    item_cluster = rng.integers(0, clusters, items)
    vectors = centres[item_cluster] + 0.7 * rng.standard_normal((items, dim), dtype=np.float32)
    item_ids = np.array([f"i{i}" for i in range(items)], dtype=object)
    by_cluster = [np.flatnonzero(item_cluster == c) for c in range(clusters)]
    lengths = rng.integers(5, 41, users)
    home = rng.integers(0, clusters, users)
    rows_u, rows_i = [], []
    for u in range(users):
        n = int(lengths[u])
        own = rng.choice(by_cluster[home[u]], size=n)
        other = rng.integers(0, items, n)
        pick = np.where(rng.random(n) < 0.8, own, other)
        rows_u.append(np.full(n, u))
        rows_i.append(pick)
    u = np.concatenate(rows_u)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    ev = pl.DataFrame(
        {
            "user_id": pl.Series([f"u{x}" for x in u]),
            "item_id": pl.Series(item_ids[np.concatenate(rows_i)].tolist()),
            "ts": pl.datetime_range(t0, t0 + timedelta(seconds=len(u) - 1), "1s", eager=True, time_zone="UTC"),
        }
    )
    cfg = build_config({"run": {"name": "bench", "dir": str(root)}})
    ev = schema.coerce(ev, "events", "<bench>")
    schema.write_table(ev, cfg.prepared_dir / "events.parquet", "events")
    EmbeddingSet(item_ids, vectors, kind="bench").save(cfg.run_dir / "bench" / "embeddings")
    export_all({"bench": cfg.run_dir / "bench" / "embeddings"}, cfg.run_dir, n_trees=50, sample=200)
    return cfg


def plain_loop(cfg, c: CandidatesConfig) -> float:
    """The peer: one process, one Retriever, recommend_batch over all users; wall seconds."""
    t0 = time.perf_counter()
    ev = schema.read_table(cfg.prepared_dir / "events.parquet", "events")
    q, fit = production_queries(ev)
    idx_dir = cfg.run_dir / "index" / "bench"
    emb = EmbeddingSet.load(cfg.run_dir / "bench" / "embeddings", verify=False)
    r = Retriever(
        {"bench": (emb, load_index(idx_dir, verify=False))}, popularity=popularity(fit), query=c.query, last_n=c.last_n
    )
    users, hist = q["user_id"].to_list(), q["history"].to_list()
    rows = 0
    for lo in range(0, len(users), c.batch_size):
        hi = lo + c.batch_size
        rows += r.recommend_batch(hist[lo:hi], c.k, user_ids=users[lo:hi]).height
    assert rows == len(users) * c.k  # noqa: S101 - a benchmark sanity check, not user input
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="recemb-bench-cand-") as tmp:
        t0 = time.perf_counter()
        cfg = make_run(Path(tmp), args.users, args.items, args.dim)
        print(
            f"run: {args.users} users, {args.items} items, dim {args.dim}, k {args.k} "
            f"(made in {time.perf_counter() - t0:.1f}s)"
        )
        base = CandidatesConfig(k=args.k, partitions=args.partitions, verify=False)
        results = [("plain loop, 1 process (peer)", plain_loop(cfg, base))]

        def job(name: str, **kw) -> None:
            c = base.model_copy(update={"out": str(Path(tmp) / name.replace(" ", "_")), **kw})
            t = time.perf_counter()
            generate_candidates(cfg.run_dir, cfg.prepared_dir / "events.parquet", c, log_fn=lambda _: None)
            results.append((name, time.perf_counter() - t))

        job("job in-process (num_workers=0)", num_workers=0)
        from recemb.ray_runtime import ray_session

        with ray_session(num_cpus=2):
            job("Ray Data, 1 worker x 1 CPU", num_workers=1, cpus_per_worker=1.0)
            job("Ray Data, 2 workers x 1 CPU", num_workers=2, cpus_per_worker=1.0)
            job("Ray Data, 2 workers x 0.5 CPU", num_workers=2, cpus_per_worker=0.5)
        peer = results[0][1]
        print(f"\n{'how':34s} {'seconds':>8s} {'users/s':>9s} {'vs peer':>8s}")
        for name, secs in results:
            print(f"{name:34s} {secs:8.2f} {args.users / secs:9,.0f} {peer / secs:7.2f}x")


if __name__ == "__main__":
    main()
