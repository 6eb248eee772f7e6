"""Two-tower on ML-100K (P-ML): quality with ablations, and fused vs plain training throughput.

Questions:

1. Does the two-tower model beat the evaluation harness's baselines at
   Recall@20 on P-ML (trained on the leave-last-out train part only; the
   test query is the user's train history), and what do logQ correction,
   the temperature, accidental-hit removal and mixed negatives contribute?
2. How many training samples/s does the fused torchrec path
   (EmbeddingBagCollection + fused RowWiseAdagrad under
   DistributedModelParallel) reach against a plain ``nn.EmbeddingBag`` +
   Adam version of the same model, in the same run?

Peers' reference figures (DESIGN.md §7, same protocol): gensim item2vec
tuned 0.170-0.180, implicit ALS/BPR tuned 0.162-0.168; popularity and kNN
are recomputed here. Run::

    .venv/bin/python benchmarks/two_tower.py              # all rows (~10 min on 2 busy cores)
    .venv/bin/python benchmarks/two_tower.py --quick      # default row, logQ off, throughput
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from recemb.data.paths import data_dir
from recemb.data.sources import prepare_source
from recemb.data.splits import leave_last_out
from recemb.data.vocab import Vocab
from recemb.eval.evaluate import baseline_scorers
from recemb.eval.model_scorer import ModelScorer
from recemb.eval.protocols import run_ml
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.features import FeatureSpace, build_examples, item_vocab
from recemb.models.two_tower.model import TwoTower
from recemb.train.two_tower import fit_loop

REFERENCE = {"gensim item2vec tuned (DESIGN §7)": 0.175, "implicit ALS/BPR tuned (DESIGN §7)": 0.165}
ABLATIONS = {
    "two_tower (default: logQ, T=0.05)": {},
    "  logQ off": {"logq": False},
    "  temperature 0.1": {"temperature": 0.1},
    "  temperature 0.02": {"temperature": 0.02},
    "  accidental hits kept": {"remove_accidental_hits": False},
    "  + 512 mixed negatives": {"mixed_negatives": 512},
    "  + user features (age, gender, occupation)": {"user_features": ["age", "gender", "occupation"]},
    "  plain backend (nn.EmbeddingBag + Adam)": {"backend": "torch"},
}
QUICK = ["two_tower (default: logQ, T=0.05)", "  logQ off"]


def quality(ds, rows: list[str], seed: int) -> list[tuple[str, dict]]:
    split = leave_last_out(ds.events)
    catalogue = Vocab.from_ids(ds.events["item_id"])
    out = []
    for name, scorer in baseline_scorers(["popularity", "knn"], "ml", seed).items():
        out.append((name, run_ml(split, scorer, catalogue, ks=(10, 20), seed=seed)))
    for name in rows:
        cfg = TwoTowerConfig(seed=seed, **ABLATIONS[name])
        scorer = ModelScorer(lambda cfg=cfg: TwoTower(cfg), name, side={"items": ds.items, "users": ds.users})
        res = run_ml(split, scorer, catalogue, ks=(10, 20), seed=seed)
        out.append((name, res))
        print(f"  {name.strip()}: recall@20 {res['recall@20']:.4f} ({res['fit_s']:.0f} s)", file=sys.stderr)
    return out


def throughput(ds, epochs: int) -> dict[str, float]:
    """samples/s of each backend over ``epochs`` epochs of the P-ML train part (set-up excluded)."""
    split = leave_last_out(ds.events)
    out = {}
    for backend in ("torchrec", "torch"):
        cfg = TwoTowerConfig(backend=backend, epochs=epochs)
        space = FeatureSpace(item_vocab(ds.events, ds.items), cfg, ds.items)
        examples = build_examples(split.train, space)
        _, history = fit_loop(space, examples, cfg)
        seconds = sum(h["seconds"] for h in history)
        out[backend] = epochs * (len(examples) // cfg.batch_size) * cfg.batch_size / seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the default row, logQ off and throughput")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--throughput-epochs", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = data_dir() / "ml-100k"
    if not root.exists():
        sys.exit(f"{root} not found: set RECEMB_DATA_DIR or run `recemb data fetch movielens-100k`")
    ds, _ = prepare_source("movielens-100k", root)
    rows = QUICK if args.quick else list(ABLATIONS)
    t0 = time.perf_counter()
    results = quality(ds, rows, args.seed)
    best_baseline = max(r["recall@20"] for n, r in results if not n.startswith(("two_tower", " ")))
    best_peer = max(REFERENCE.values())
    print("\nP-ML, ML-100K (943 test users, catalogue 1682): trained on the train part only")
    print(f"{'model':46s} {'R@10':>7s} {'R@20':>7s} {'N@20':>7s} {'fit s':>7s}  vs best peer ({best_peer:.3f})")
    for name, r in results:
        print(
            f"{name:46s} {r['recall@10']:7.4f} {r['recall@20']:7.4f} {r['ndcg@20']:7.4f} {r['fit_s']:7.1f}"
            f"  {r['recall@20'] / best_peer:5.2f}x"
        )
    for name, value in REFERENCE.items():
        print(f"{name:46s} {'':7s} {value:7.3f}")
    print(f"(best recomputed baseline R@20 {best_baseline:.4f}; {time.perf_counter() - t0:.0f} s)")

    tp = throughput(ds, args.throughput_epochs)
    print("\nTraining throughput, same model and data (samples/s, set-up excluded)")
    print(f"{'path':52s} {'samples/s':>10s}")
    print(f"{'torchrec EBC + fused RowWiseAdagrad (DMP, 1 rank)':52s} {tp['torchrec']:10.0f}")
    print(f"{'nn.EmbeddingBag + Adam':52s} {tp['torch']:10.0f}")
    print(f"{'ratio fused / plain':52s} {tp['torchrec'] / tp['torch']:10.2f}x")


if __name__ == "__main__":
    main()
