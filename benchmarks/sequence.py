"""The sequence model against the mean-pooled two-tower and the co-occurrence baselines, and its cost at scale.

Questions:

1. Quality: on P-SESS (Yoochoose-100k, the synthetic default) and P-ML
   (ML-100K, the synthetic default), does the sequence model (one set of
   defaults, unchanged across datasets) beat knn-recency / knn and the
   mean-pooled two-tower, and what do its parts contribute (repeat path,
   time gaps, full vs sampled softmax)? Every model is fitted on the
   protocol's train split by the evaluation harness (``run_rows``), the same
   code ``recemb evaluate`` runs. ``--split validation`` scores the
   validation split instead (the last 10% of train sessions by time under
   P-SESS, the second-to-last item under P-ML, the later half of the train
   impressions under P-IMP), where settings may be chosen.
2. Cost: training targets/s and seconds per epoch as the catalogue grows
   (10k, 100k, 1M items; random sessions of 10 items), full softmax where
   its ``[targets, N]`` logits fit, sampled softmax at every size.

Run::

    .venv/bin/python benchmarks/sequence.py                       # quality, all four datasets (~40 min on 2 cores)
    .venv/bin/python benchmarks/sequence.py --only yoochoose --rows default
    .venv/bin/python benchmarks/sequence.py --scale-only --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recemb.data.paths import data_dir
from recemb.data.sources import prepare_source
from recemb.eval.config import EvalConfig
from recemb.eval.evaluate import baseline_scorers, protocol_inputs, run_rows
from recemb.eval.model_scorer import ModelScorer
from recemb.eval.validation import validation_split
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.epochs import SequenceTrainer
from recemb.models.sequence.model import SequenceModel
from recemb.models.sequence.net import SequenceNet
from recemb.models.sequence.windows import Sequences, training_windows
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.model import TwoTower

DATASETS = {  # name -> (protocol, baselines, metric columns)
    "yoochoose": ("sess", ["popularity", "knn-last", "knn-recency"], ["recall@20", "mrr@20"]),
    "synthetic-sess": ("sess", ["popularity", "knn-last", "knn-recency"], ["recall@20", "mrr@20"]),
    "ml-100k": ("ml", ["popularity", "knn", "knn-recency"], ["recall@10", "recall@20", "ndcg@10"]),
    "synthetic-ml": ("ml", ["popularity", "knn", "knn-recency"], ["recall@10", "recall@20", "ndcg@10"]),
    "synthetic-imp": ("imp", ["popularity", "knn", "knn-recency"], ["auc", "mrr", "ndcg@10"]),
}
ROWS = {  # row -> changes to the sequence defaults (None: the mean-pooled two-tower)
    "two_tower (mean-pooled tower)": None,
    "sequence (defaults)": {},  # repeat path auto: on where the train data repeats items
    "  no repeat path": {"repeat": False},
    "  repeat path always on": {"repeat": True},
    "  no time gaps": {"time_gaps": False},
    "  no query gap": {"query_gap": False},
    "  sampled softmax (2048 uniform)": {"loss": "sampled"},
}


def load(name: str):
    """``(protocol, split, catalogue)`` of a dataset (None when its files are missing)."""
    protocol = DATASETS[name][0]
    if name.startswith("synthetic"):
        from recemb.config import load_config
        from recemb.data.dataset import load_dataset
        from recemb.data.prepare import prepare_dataset

        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
        ds = load_dataset(prepare_dataset(cfg.data, Path("runs") / "bench-sequence" / "synthetic"))
    else:
        folder = {"yoochoose": "yoochoose-100k", "ml-100k": "ml-100k"}[name]
        source = {"yoochoose": "yoochoose", "ml-100k": "movielens-100k"}[name]
        if not (data_dir() / folder).is_dir():
            return None
        ds, _ = prepare_source(source, data_dir() / folder)
    split, catalogue = protocol_inputs(ds, protocol, EvalConfig())
    return protocol, split, catalogue


def quality(name: str, rows: list[str], split_name: str, epochs: int | None, seed: int) -> list[dict]:
    loaded = load(name)
    if loaded is None:
        print(f"{name}: data not found under {data_dir()}; skipped")
        return []
    protocol, split, catalogue = loaded
    if split_name == "validation":
        split, catalogue = validation_split(protocol, split, catalogue, 0.5 if protocol == "imp" else 0.1)
    unit = "session" if protocol == "sess" else "user"
    scorers = dict(baseline_scorers(DATASETS[name][1], protocol, seed))
    for row in rows:
        change = ROWS[row]
        if change is None:
            scorers[row] = ModelScorer(lambda: TwoTower(TwoTowerConfig(seed=seed)), row, unit)
        else:
            config = SequenceConfig(seed=seed, **change, **({"epochs": epochs} if epochs else {}))
            scorers[row] = ModelScorer(lambda config=config: SequenceModel(config), row, unit)
    t0 = time.perf_counter()
    ks = {"ml": [10, 20], "sess": [20], "imp": [5, 10]}[protocol]
    out = run_rows(protocol, split, catalogue, scorers, ks, seed=seed)
    print(f"\n{name} · P-{protocol.upper()} · {split_name} split ({time.perf_counter() - t0:.0f}s)")
    columns = DATASETS[name][2]
    print(f"| model | {' | '.join(columns)} | fit s |\n|---|{'---|' * len(columns)}---|")
    for r in out:
        print(f"| {r['model']} | {' | '.join(f'{r[c]:.4f}' for c in columns)} | {r['fit_s']:.0f} |")
    return [{"dataset": name, "split": split_name, **r} for r in out]


def scale(sizes: list[int], windows: int, steps: int, seed: int) -> list[dict]:
    """Training throughput on random 10-item sessions over catalogues of ``sizes`` items."""
    rng = np.random.default_rng(seed)
    out = []
    print("\n| items | loss | targets/s | s per step | s per epoch of 1M targets |\n|---|---|---|---|---|")
    for n in sizes:
        items = rng.integers(0, n, size=windows * 10)
        seqs = Sequences(items, np.ones_like(items), np.arange(0, len(items) + 1, 10))
        w = training_windows(seqs, 50)
        for loss in ("full", "sampled"):
            if loss == "full" and n > 100_000:
                continue  # [128 x 9 targets, N] logits and their gradient: 4.6 GB at 1M items
            config = SequenceConfig(loss=loss, seed=seed)
            torch.manual_seed(seed)
            net = SequenceNet(n, config)
            trainer = SequenceTrainer(net, net, config, torch.device("cpu"))
            sub = w.take(np.arange(config.batch_size * steps))
            trainer.run_epoch(w.take(np.arange(config.batch_size)), 0)  # warm-up
            stats = trainer.run_epoch(sub, 1)
            rate = stats["targets"] / stats["seconds"]
            row = {"items": n, "loss": loss, "targets_per_s": rate, "step_s": stats["seconds"] / steps}
            out.append(row)
            print(f"| {n:,} | {loss} | {rate:,.0f} | {row['step_s']:.3f} | {1e6 / rate:.0f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--rows", nargs="+", default=None, help="'default' or row names (default: all)")
    ap.add_argument("--split", choices=["test", "validation"], default="test")
    ap.add_argument("--epochs", type=int, default=None, help="override sequence.epochs (default: the default)")
    ap.add_argument("--scale-only", action="store_true")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--scale-windows", type=int, default=4096)
    ap.add_argument("--scale-steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every row here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = list(ROWS) if args.rows is None else ["sequence (defaults)" if r == "default" else r for r in args.rows]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    torch.set_num_threads(2)
    results: list[dict] = []
    if not args.scale_only:
        for name in args.only:
            results += quality(name, rows, args.split, args.epochs, args.seed)
    if not args.no_scale:
        results += scale(args.sizes, args.scale_windows, args.scale_steps, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
