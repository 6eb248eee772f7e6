"""item2vec vs gensim Word2Vec: speed and P-SESS quality on the same corpus and cores.

Both train on the same sessions with the same hyper-parameters (dim, window,
negatives, epochs, sample, min_count, ns_exponent, alpha schedule) and the
same number of threads (gensim ``workers`` = recemb numba threads). Runs
alternate (gensim, recemb, gensim, recemb, ...) so that load from other
processes on a shared machine hits both alike; every run is reported.
Events/s = corpus events x epochs / training seconds (vocabulary and corpus
building excluded for both; reported separately).

Corpora:
  yoochoose  ../shared/data/yoochoose-100k (train_full / test), P-SESS
  synth      Zipf items with topic structure (numpy), --synth-events events,
             the last 5% of sessions held out for P-SESS

P-SESS (DESIGN.md §7): query = the prefix's last item, cosine over the train
catalogue, Recall@20 / MRR@20 over every position i >= 1 of test sessions,
through recemb.eval (run_protocol("sess", ...) with EmbeddingScorer(query="last"),
ties broken at random).

    .venv/bin/python benchmarks/item2vec_vs_gensim.py --corpus yoochoose --epochs 5 --repeats 2
    .venv/bin/python benchmarks/item2vec_vs_gensim.py --corpus synth --synth-events 5000000 --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import polars as pl

from recemb.data.paths import data_dir

# ----------------------------------------------------------------- corpora
from recemb.models.item2vec.config import Item2VecConfig

# ----------------------------------------------------------------- corpora
from recemb.models.item2vec.corpus import build_corpus
from recemb.models.item2vec.model import Item2Vec


# ----------------------------------------------------------------- corpora
def yoochoose() -> tuple[list[list[str]], list[list[str]]]:
    """(train sessions, test sessions) as lists of item ids, P-SESS filtered."""
    root = data_dir() / "yoochoose-100k"

    def read(name: str) -> pl.DataFrame:
        return pl.read_csv(
            root / name, separator="\t", schema_overrides={"SessionId": pl.String, "ItemId": pl.String}
        ).with_row_index("_row")

    train = read("yoochoose-clicks-100k_train_full.txt")
    test = read("yoochoose-clicks-100k_test.txt")
    return _sessions(train), _sessions(_test_filter(train, test))


def _sessions(df: pl.DataFrame) -> list[list[str]]:
    order = df.with_columns(_start=pl.col("Time").min().over("SessionId")).sort(["_start", "SessionId", "Time", "_row"])
    return order.group_by("SessionId", maintain_order=True).agg("ItemId")["ItemId"].to_list()


def _test_filter(train: pl.DataFrame, test: pl.DataFrame) -> pl.DataFrame:
    test = test.filter(pl.col("ItemId").is_in(train["ItemId"].unique().implode()))
    return test.filter(pl.len().over("SessionId") >= 2)


def synth(n_events: int, n_items: int = 20_000, topics: int = 50, seed: int = 0):
    """Zipf popularity inside topics; a session stays in one topic (drifting with p=0.15)."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(2, rng.geometric(1 / 6.0, size=int(n_events / 6 * 1.1)))
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_events) + 1]
    total = int(lengths.sum())
    per_topic = n_items // topics
    zipf = 1.0 / np.arange(1, per_topic + 1)
    zipf_cdf = np.cumsum(zipf) / zipf.sum()
    sess_of = np.repeat(np.arange(len(lengths)), lengths)
    first = np.r_[True, sess_of[1:] != sess_of[:-1]]
    # Topic per event: a session's topic, redrawn at each drift point (vectorised
    # as a forward fill of the topic drawn at session starts and drift points).
    change = first | (rng.random(total) < 0.15)
    draw = rng.integers(0, topics, size=total)
    idx = np.where(change, np.arange(total), 0)
    np.maximum.accumulate(idx, out=idx)
    topic = draw[idx]
    rank = np.searchsorted(zipf_cdf, rng.random(total))
    items = topic * per_topic + np.minimum(rank, per_topic - 1)
    names = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    bounds = np.cumsum(lengths)[:-1]
    sessions = [s.tolist() for s in np.split(names[items], bounds)]
    n_test = len(sessions) // 20
    train, test = sessions[:-n_test], sessions[-n_test:]
    vocab = set(names[np.unique(np.concatenate([items[: bounds[-n_test]]]))].tolist())
    test = [[i for i in s if i in vocab] for s in test]
    return train, [s for s in test if len(s) >= 2]


# -------------------------------------------------------------- evaluation
class PSess:
    """P-SESS through recemb.eval for sessions given as lists of item ids."""

    def __init__(self, train: list[list[str]], test: list[list[str]]):
        from recemb.data.splits import SessionSplit
        from recemb.data.vocab import Vocab

        self.catalogue = Vocab.from_ids(pl.Series("item_id", train, dtype=pl.List(pl.String)).explode())
        frame = pl.DataFrame(pl.Series("item_id", test, dtype=pl.List(pl.String))).with_row_index("s")
        frame = frame.explode("item_id").with_columns(
            session_id=pl.col("s").cast(pl.String).str.zfill(9),
            ts=pl.int_range(pl.len()).over("s").cast(pl.Datetime("us", "UTC")),
        )
        self.split = SessionSplit(train=frame.head(0), test=frame.select("session_id", "item_id", "ts"))

    def __call__(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
        from recemb.embeddings import EmbeddingSet
        from recemb.eval.embedding_scorer import EmbeddingScorer
        from recemb.eval.protocols import run_protocol

        scorer = EmbeddingScorer(EmbeddingSet(ids, vectors, kind="item2vec"), query="last", scoring="cosine")
        out = run_protocol("sess", self.split, scorer, self.catalogue, ks=(20,))
        return out["recall@20"], out["mrr@20"]


# ------------------------------------------------------------------- runs
def run_gensim(train, cfg: Item2VecConfig, threads: int):
    from gensim.models import Word2Vec

    w2v = Word2Vec(
        vector_size=cfg.dim,
        window=cfg.window,
        negative=cfg.negatives,
        ns_exponent=cfg.ns_exponent,
        sample=cfg.sample,
        min_count=cfg.min_count,
        alpha=cfg.alpha,
        min_alpha=cfg.min_alpha,
        sg=int(cfg.mode == "skipgram"),
        workers=threads,
        seed=cfg.seed,
        epochs=cfg.epochs,
    )
    t0 = time.perf_counter()
    w2v.build_vocab(train)
    prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    w2v.train(train, total_examples=w2v.corpus_count, epochs=cfg.epochs)
    secs = time.perf_counter() - t0
    return np.array(w2v.wv.index_to_key, dtype=object), w2v.wv.vectors, secs, prep


def run_recemb(train, cfg: Item2VecConfig, threads: int):
    t0 = time.perf_counter()
    corpus = build_corpus(train, min_count=cfg.min_count)
    prep = time.perf_counter() - t0
    model = Item2Vec(cfg.model_copy(update={"threads": threads})).fit(corpus)
    return model.vocab.ids, model.vectors, model.train_seconds, prep


# recemb-shared: one set of negatives per centre, shared by its context items.
RUNS = [
    ("gensim", run_gensim, {}),
    ("recemb", run_recemb, {"backend": "numba"}),
    ("recemb-shared", run_recemb, {"backend": "numba", "shared_negatives": True}),
]
# --torch: the batched torch kernel (CUDA when available, else CPU: slow, for reference).
TORCH_RUN = ("recemb-torch", run_recemb, {"backend": "torch", "device": "auto"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["yoochoose", "synth"], default="yoochoose")
    ap.add_argument("--synth-events", type=int, default=5_000_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--mode", choices=["skipgram", "cbow"], default="skipgram")
    ap.add_argument("--ns-exponent", type=float, default=0.75)
    ap.add_argument("--sample", type=float, default=1e-3)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--torch", action="store_true", help="also run the torch backend")
    args = ap.parse_args()
    if args.torch:
        RUNS.append(TORCH_RUN)
    logging.basicConfig(level=logging.WARNING)

    train, test = yoochoose() if args.corpus == "yoochoose" else synth(args.synth_events)
    n_events = sum(len(s) for s in train)
    cfg = Item2VecConfig(
        dim=64,
        window=args.window,
        negatives=5,
        epochs=args.epochs,
        mode=args.mode,
        ns_exponent=args.ns_exponent,
        sample=args.sample,
        min_count=args.min_count,
    )
    print(
        f"corpus {args.corpus}: {n_events:,} train events, {len(train):,} sessions, "
        f"{sum(len(s) - 1 for s in test):,} P-SESS queries; dim 64, window {cfg.window}, "
        f"negatives 5, epochs {cfg.epochs}, {cfg.mode}, sample {cfg.sample}, ns_exponent {cfg.ns_exponent}, "
        f"threads {args.threads}"
    )
    evaluate = PSess(train, test)
    # Compile the numba kernel outside the timed runs (it is cached on disk after).
    run_recemb(train[:200], cfg.model_copy(update={"epochs": 1}), args.threads)
    rows = []
    for rep in range(args.repeats):
        for name, fn, extra in RUNS:
            ids, vecs, secs, prep = fn(train, cfg.model_copy(update={"seed": rep, **extra}), args.threads)
            recall, mrr = evaluate(ids, vecs)
            rows.append((name, rep, n_events * cfg.epochs / secs, secs, prep, recall, mrr))
    gensim_eps = np.mean([r[2] for r in rows if r[0] == "gensim"])
    print(
        f"\n{'model':14} {'run':>3} {'events/s':>11} {'ratio':>6} {'train s':>8} {'prep s':>7} "
        f"{'Recall@20':>9} {'MRR@20':>7}"
    )
    for name, rep, eps, secs, prep, recall, mrr in rows:
        print(
            f"{name:14} {rep:>3} {eps:>11,.0f} {eps / gensim_eps:>6.2f} {secs:>8.2f} {prep:>7.2f} "
            f"{recall:>9.4f} {mrr:>7.4f}"
        )
    for name, _, _ in RUNS:
        sel = [r for r in rows if r[0] == name]
        eps = np.mean([r[2] for r in sel])
        print(
            f"{name + ' mean':18} {eps:>11,.0f} {eps / gensim_eps:>6.2f} {'':>8} {'':>7} "
            f"{np.mean([r[5] for r in sel]):>9.4f} {np.mean([r[6] for r in sel]):>7.4f}"
        )


if __name__ == "__main__":
    main()
