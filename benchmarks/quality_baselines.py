"""Quality of recemb's baselines beside the peers, on the real datasets (DESIGN.md §7).

Question: on the same splits and protocol code, what do popularity, the
co-occurrence kNN variants, random, gensim item2vec (defaults and the
DESIGN's tuned setting) and implicit ALS/BPR score, and how long does each
take to fit and to score?

=============  ============  =========================================
data           protocol      rows
=============  ============  =========================================
ML-100K        P-ML          baselines, item2vec x2, ALS, BPR
Yoochoose-100k P-SESS        baselines, item2vec x2
MIND subset    P-IMP         baselines, item2vec x2
=============  ============  =========================================

Peers are dev-only (``pip install -r requirements/peers.txt``); a peer that
is not installed is skipped with a note. Each peer is wrapped as a Scorer:
gensim's ``wv`` becomes an :class:`EmbeddingSet` scored by
:class:`EmbeddingScorer`, exactly the path a recemb model takes.

Run::

    .venv/bin/python benchmarks/quality_baselines.py                 # tuned = 150 epochs (a few minutes)
    .venv/bin/python benchmarks/quality_baselines.py --tuned-epochs 20 --only ml   # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows) with threaded BLAS

import numpy as np
import polars as pl
import scipy.sparse as sp

from recemb.data.paths import data_dir
from recemb.data.sources import prepare_source
from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet
from recemb.eval.config import EvalConfig
from recemb.eval.embedding_scorer import EmbeddingScorer
from recemb.eval.evaluate import baseline_scorers, protocol_inputs, run_rows, runner_options, split_counts
from recemb.eval.scorers import QueryBatch
from recemb.eval.tables import format_tables

DATASETS = {  # protocol -> (source name, folder under data_dir(), baselines)
    "ml": ("movielens-100k", "ml-100k", ["popularity", "knn", "random"]),
    "sess": ("yoochoose", "yoochoose-100k", ["popularity", "knn", "knn-recency", "random"]),
    "imp": ("mind", "mind-small-subset", ["popularity", "knn", "random"]),
}
COLUMNS = {
    "ml": ["recall@10", "recall@20", "ndcg@10", "ndcg@20"],
    "sess": ["recall@20", "mrr@20"],
    "imp": ["auc", "mrr", "ndcg@5", "ndcg@10", "ctr@5"],
}
KS = {"ml": [10, 20], "sess": [20], "imp": [5, 10]}
DIM = 64


class GensimItem2Vec:
    """gensim skip-gram Word2Vec over each unit's (user's or session's) train items, as a Scorer."""

    def __init__(
        self,
        name: str,
        unit: str,
        epochs: int = 5,
        window: int = 5,
        ns_exponent: float = 0.75,
        query: str = "mean_last_n",
        last_n: int = 5,
        seed: int = 0,
        workers: int = 2,
    ):
        self.name, self.unit = name, unit
        self.params = dict(
            vector_size=DIM,
            sg=1,
            min_count=1,
            epochs=epochs,
            window=window,
            ns_exponent=ns_exponent,
            seed=seed,
            workers=workers,
        )
        self.query, self.last_n = query, last_n
        self._scorer: EmbeddingScorer | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> GensimItem2Vec:
        from gensim.models import Word2Vec

        col = f"{self.unit}_id"
        sentences = (
            train.sort([col, "ts", "item_id"], maintain_order=True)
            .group_by(col, maintain_order=True)
            .agg("item_id")["item_id"]
            .to_list()
        )
        model = Word2Vec(sentences, **self.params)
        es = EmbeddingSet(model.wv.index_to_key, model.wv.vectors, kind="gensim_word2vec", config=self.params)
        self._scorer = EmbeddingScorer(es, query=self.query, last_n=self.last_n, name=self.name).fit(train, catalogue)
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        return self._scorer.score_queries(queries)


class ImplicitMF:
    """implicit ALS or BPR on the binary user x item matrix of train, scored by the user's factors.

    P-ML queries carry the user ids, and every test user is in train, so the
    user's own factors are the query (a user without factors scores zeros).
    """

    def __init__(self, name: str, algo: str, seed: int = 0, **params):
        self.name, self.algo, self.seed, self.params = name, algo, seed, params

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> ImplicitMF:
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking

        pairs = train.select("user_id", "item_id").unique()
        items = catalogue.lookup(pairs["item_id"])
        keep = items >= 0
        self.users = Vocab(pairs["user_id"].unique().sort().to_numpy().astype(object))
        users = self.users.lookup(pairs["user_id"])[keep]
        x = sp.csr_matrix(
            (np.ones(keep.sum(), np.float32), (users, items[keep])), shape=(len(self.users), len(catalogue))
        )
        cls = AlternatingLeastSquares if self.algo == "als" else BayesianPersonalizedRanking
        model = cls(factors=DIM, random_state=self.seed, num_threads=2, **self.params)
        model.fit(x, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        rows = self.users.lookup(pl.Series(queries.user_ids.tolist(), dtype=pl.String))
        q = np.where((rows >= 0)[:, None], self.user_factors[np.maximum(rows, 0)], 0.0)
        return (q @ self.item_factors.T).astype(np.float32)


def peers(protocol: str, tuned_epochs: int) -> tuple[dict, list[str]]:
    """Peer scorers for ``protocol`` and notes on the ones that are not installed."""
    out, notes = {}, []
    unit = "session" if protocol == "sess" else "user"
    if importlib.util.find_spec("gensim"):
        out["gensim-i2v-default"] = GensimItem2Vec("gensim-i2v-default", unit)
        out[f"gensim-i2v-tuned-{tuned_epochs}ep"] = GensimItem2Vec(
            f"gensim-i2v-tuned-{tuned_epochs}ep", unit, epochs=tuned_epochs, window=10, ns_exponent=0.0
        )
    else:
        notes.append("gensim not installed: item2vec rows skipped (pip install -r requirements/peers.txt)")
    if protocol == "ml":
        if importlib.util.find_spec("implicit"):
            out["implicit-als"] = ImplicitMF("implicit-als", "als", regularization=0.05, iterations=15)
            out["implicit-bpr"] = ImplicitMF("implicit-bpr", "bpr", iterations=100)
        else:
            notes.append("implicit not installed: ALS/BPR rows skipped (pip install -r requirements/peers.txt)")
    return out, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(DATASETS), action="append", help="protocol(s) to run (default: all)")
    ap.add_argument("--tuned-epochs", type=int, default=150, help="epochs of the tuned item2vec (150 = DESIGN)")
    ap.add_argument("--no-peers", action="store_true", help="baselines only")
    ap.add_argument("--json", type=Path, help="also write all rows to this JSON file")
    args = ap.parse_args(argv)

    results, notes = [], []
    for protocol in args.only or list(DATASETS):
        source, folder, baselines = DATASETS[protocol]
        raw = data_dir() / folder
        if not raw.is_dir():
            notes.append(f"{source}: {raw} not found; skipped (set RECEMB_DATA_DIR)")
            continue
        t0 = time.perf_counter()
        ds, _ = prepare_source(source, raw)
        split, catalogue = protocol_inputs(ds, protocol, EvalConfig())
        prep_s = time.perf_counter() - t0
        scorers = baseline_scorers(baselines, protocol)
        if not args.no_peers:
            extra, why = peers(protocol, args.tuned_epochs)
            scorers |= extra
            notes += why
        rows = run_rows(
            protocol,
            split,
            catalogue,
            scorers,
            KS[protocol],
            log=lambda m: print(m, file=sys.stderr),
            options=runner_options(protocol, EvalConfig()),
        )
        results.append(
            {
                "dataset": source,
                "protocols": {protocol: {"split": {**split_counts(split), "catalogue": len(catalogue)}, "rows": rows}},
            }
        )
        print(f"{source}: prepared and split in {prep_s:.1f}s", file=sys.stderr)
    for res in results:
        (protocol,) = res["protocols"]
        print(format_tables(res, COLUMNS[protocol]) + "\n")
    for note in notes:
        print("note:", note)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
