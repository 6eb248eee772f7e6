"""How should data-parallel item2vec workers synchronise syn0 / syn1? Speed and P-SESS quality.

Every row trains the same corpus with the same hyper-parameters through
recemb.train.item2vec (the real TorchTrainer path; gloo all-reduce between
Ray workers of ``--cpus-per-worker`` CPUs each):

  in-process 1 thr   the loop without Ray, one numba thread (the reference)
  in-process N thr   the loop without Ray, N Hogwild threads (the non-Ray peer)
  ray x1             one Ray worker (what Ray itself costs)
  ray xN mean/ep     N workers, parameter averaging once per epoch
  ray xN sum/ep      N workers, sum of the workers' changes once per epoch
  ray xN sum x10     the same, 10 syncs per epoch
  ray xN DDP-step    mean of the workers' changes after every step of
                     --step-pairs (centre, context) pairs per worker: the
                     traffic and arithmetic of DDP with dense embedding
                     gradients (one [V, D] all-reduce per table per step),
                     with the same SGNS kernel so only the sync differs

events/s = corpus events x epochs / training seconds (sum of the epoch times
measured inside the loop: Ray start-up and worker set-up excluded, reported
as "wall s"). Recall@20 / MRR@20: P-SESS (DESIGN.md §7), query = last item,
as in benchmarks/item2vec_vs_gensim.py.

    .venv/bin/python benchmarks/item2vec_sync.py --corpus yoochoose --epochs 10
    .venv/bin/python benchmarks/item2vec_sync.py --corpus synth --synth-events 1000000 --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from item2vec_vs_gensim import PSess, synth, yoochoose  # noqa: E402  (same corpora and P-SESS harness)

from recemb.models.item2vec.config import Item2VecConfig  # noqa: E402
from recemb.models.item2vec.corpus import build_corpus  # noqa: E402
from recemb.ray_runtime import ray_session  # noqa: E402
from recemb.train.item2vec import fit_corpus  # noqa: E402
from recemb.train.ray_config import RayTrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["yoochoose", "synth"], default="yoochoose")
    ap.add_argument("--synth-events", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--step-pairs", type=int, default=16384, help="pairs per worker step of the DDP-style row")
    ap.add_argument("--only", nargs="*", help="run only these rows (names as printed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    train, test = yoochoose() if args.corpus == "yoochoose" else synth(args.synth_events)
    corpus = build_corpus(train)
    cfg = Item2VecConfig(dim=64, window=5, negatives=5, epochs=args.epochs, seed=args.seed, threads=1)
    evaluate = PSess(train, test)
    n = args.workers
    print(
        f"corpus {args.corpus}: {corpus.n_events:,} events, {corpus.n_sessions:,} sessions, "
        f"{len(corpus.vocab):,} items; dim 64, window 5, negatives 5, epochs {cfg.epochs}; "
        f"{n} workers x {args.cpus_per_worker} CPU; machine: {os.cpu_count()} cores"
    )
    threads = max(1, int(args.cpus_per_worker))
    rows_spec = [
        ("in-process 1 thr", RayTrainConfig(workers=0), cfg, "sum", 1),
        (
            f"in-process {n * threads} thr",
            RayTrainConfig(workers=0),
            cfg.model_copy(update={"threads": n * threads}),
            "sum",
            1,
        ),
        ("ray x1", RayTrainConfig(workers=1, cpus_per_worker=args.cpus_per_worker), cfg, "sum", 1),
        (f"ray x{n} mean/ep", RayTrainConfig(workers=n, cpus_per_worker=args.cpus_per_worker), cfg, "mean", 1),
        (f"ray x{n} sum/ep", RayTrainConfig(workers=n, cpus_per_worker=args.cpus_per_worker), cfg, "sum", 1),
        (f"ray x{n} sum x10", RayTrainConfig(workers=n, cpus_per_worker=args.cpus_per_worker), cfg, "sum", 10),
        (f"ray x{n} DDP-step", RayTrainConfig(workers=n, cpus_per_worker=args.cpus_per_worker), cfg, "mean", None),
    ]
    if args.only:
        rows_spec = [r for r in rows_spec if r[0] in args.only or r[0] == "in-process 1 thr"]
    results = []
    with tempfile.TemporaryDirectory(prefix="recemb-sync-") as tmp, ray_session(num_cpus=max(2, n)):
        pairs_per_epoch = None
        for i, (label, ray_cfg, i2v, sync, syncs) in enumerate(rows_spec):
            if syncs is None:  # one sync per step of --step-pairs pairs on each worker
                syncs = max(1, math.ceil(pairs_per_epoch / n / args.step_pairs))
            t0 = time.perf_counter()
            model, _ = fit_corpus(
                corpus,
                i2v,
                ray_cfg.model_copy(update={"resume": False}),
                Path(tmp) / f"r{i}",
                sync=sync,
                syncs_per_epoch=syncs,
            )
            wall = time.perf_counter() - t0
            hist = model.history
            pairs_per_epoch = pairs_per_epoch or np.mean([h["pairs"] for h in hist])
            train_s = sum(h["seconds"] for h in hist)
            sync_s = sum(h.get("sync_seconds", 0.0) for h in hist)
            recall, mrr = evaluate(model.vocab.ids, model.vectors)
            results.append(
                (
                    label,
                    syncs,
                    corpus.n_events * cfg.epochs / train_s,
                    train_s,
                    sync_s,
                    wall,
                    hist[-1]["loss"],
                    recall,
                    mrr,
                )
            )
            print(f"  done {label} ({wall:.0f}s)", flush=True)

    base = results[0][2]
    print(
        f"\n{'strategy':20} {'syncs/ep':>8} {'events/s':>11} {'ratio':>6} {'train s':>8} {'sync s':>7} "
        f"{'wall s':>7} {'loss':>7} {'Recall@20':>9} {'MRR@20':>7}"
    )
    for label, syncs, eps, train_s, sync_s, wall, loss, recall, mrr in results:
        print(
            f"{label:20} {syncs:>8} {eps:>11,.0f} {eps / base:>6.2f} {train_s:>8.2f} {sync_s:>7.2f} "
            f"{wall:>7.1f} {loss:>7.4f} {recall:>9.4f} {mrr:>7.4f}"
        )


if __name__ == "__main__":
    main()
