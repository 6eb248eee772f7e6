"""``Item2Vec``: train item vectors on sessions, emit an EmbeddingSet.

Usage::

    model = Item2Vec(Item2VecConfig(epochs=20, window=0)).fit(events)
    emb = model.item_embeddings()            # EmbeddingSet, kind "item2vec", cosine
    ids, scores = model.similar("item_42", k=10)
    model.save_word2vec_format("items.w2v")   # gensim KeyedVectors.load_word2vec_format

Backends (``config.backend``): ``numba`` (the CPU Hogwild kernel,
:mod:`.sgns_cpu`) and ``torch`` (the batched kernel, :mod:`.sgns_torch`,
same code on CPU and CUDA); ``auto`` picks torch when CUDA is available
(and ``device`` allows it), numba otherwise. The exported vectors are the
input vectors (``syn0``), as in gensim's ``wv``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydantic

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet, l2_normalize
from recemb.errors import ConfigError, RecembError
from recemb.io import atomic_dir, atomic_path
from recemb.models.item2vec import sgns_cpu
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.item2vec.corpus import Corpus, build_corpus, keep_probabilities, negative_table
from recemb.models.protocol import EmbeddingModel
from recemb.progress import Progress

log = logging.getLogger("recemb.item2vec")


class Item2Vec(EmbeddingModel):
    """Skip-gram / CBOW with negative sampling over sessions (the ``item2vec`` registry model).

    Contract (recemb.models.protocol): items seen fewer than ``min_count``
    times, or only in one-event sessions, get no vector (``covers_unseen_items``
    is False); a query pools the item vectors (``pooled_query``).

    Attributes (after :meth:`fit`):
        vocab: the items that got a vector; row i of ``vectors`` is ``vocab.ids[i]``.
        vectors: ``[V, D]`` float32 input vectors.
        history: one dict per epoch (loss per pair, pairs, seconds, alpha).
        dropped: what the corpus left out (see :mod:`.corpus`).
        seen_counts: event count of every item id in the training data,
            including those left out, to explain a missing vector.
    """

    name = "item2vec"

    def __init__(self, config: Item2VecConfig | None = None, **overrides: Any):
        base = config or Item2VecConfig()
        self.config = base
        if overrides:
            try:
                self.config = Item2VecConfig.model_validate(base.model_dump() | overrides)
            except pydantic.ValidationError as e:
                bad = "; ".join(f"item2vec.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise ConfigError(f"Item2Vec: invalid setting(s): {bad}") from None
        self.vocab: Vocab | None = None
        self.vectors: np.ndarray | None = None
        self.history: list[dict[str, float]] = []
        self.dropped: dict[str, int] = {}
        self.backend: str | None = None
        self._seen: dict[str, int] = {}

    # ------------------------------------------------------------------ train
    def fit(self, data: pl.DataFrame | list[list[str]] | Corpus, **side: Any) -> Item2Vec:  # type: ignore[override]
        """Train on canonical events, lists of item-id sessions, or a prebuilt :class:`Corpus`.

        Side tables (``items``, ``users``, ``catalogue``, ...: the model contract's
        keywords) are accepted and ignored: item2vec learns from sessions alone.

        Empty sessions and sessions of one event are skipped (no context);
        items seen fewer than ``min_count`` times get no vector. Both are
        counted in ``self.dropped`` and logged. Returns ``self``.
        """
        cfg = self.config
        if isinstance(data, Corpus):
            corpus, self._seen = data, {}
        else:
            corpus = build_corpus(data, min_count=cfg.min_count)
            self._seen = _seen_counts(data)
        self.dropped = dict(corpus.dropped)
        self.vocab = corpus.vocab
        runner = EpochRunner(cfg, corpus.vocab.counts)
        self.backend = runner.backend
        self.history = []
        started = time.perf_counter()
        progress = Progress(f"item2vec {runner.backend}", cfg.epochs, "epoch")
        for epoch in range(cfg.epochs):
            a0, a1 = lr_range(cfg, epoch)
            t0 = time.perf_counter()
            loss, pairs = runner.run(corpus.indptr, corpus.indices, a0, a1, _epoch_seed(cfg.seed, epoch))
            secs = max(time.perf_counter() - t0, 1e-9)
            row = {
                "epoch": epoch + 1,
                "loss": loss / max(pairs, 1),
                "pairs": int(pairs),
                "seconds": secs,
                "pairs_per_s": pairs / secs,
                "events_per_s": corpus.n_events / secs,
                "alpha": a1,
            }
            self.history.append(row)
            progress.update(1, loss=row["loss"], events_per_s=row["events_per_s"])
        progress.summary = f"loss {self.history[-1]['loss']:.4f}" if self.history else ""
        progress.close()
        self.vectors = runner.input_vectors()
        self.train_seconds = time.perf_counter() - started
        return self

    @classmethod
    def from_state(
        cls,
        config: Item2VecConfig,
        vocab: Vocab,
        vectors: np.ndarray,
        history: list[dict[str, float]] | None = None,
        backend: str | None = None,
        dropped: dict[str, int] | None = None,
    ) -> Item2Vec:
        """A fitted model from saved state (e.g. a training checkpoint), without training.

        ``vectors`` is ``[V, D]`` float32, row i belonging to ``vocab.ids[i]``.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(vocab), config.dim):
            raise RecembError(
                f"Item2Vec.from_state: vectors have shape {vectors.shape}, expected "
                f"({len(vocab)}, {config.dim}) for {len(vocab)} items of dim {config.dim}"
            )
        model = cls(config)
        model.vocab, model.vectors = vocab, vectors
        model.history = list(history or [])
        model.backend = backend
        model.dropped = dict(dropped or {})
        return model

    # ------------------------------------------------------------------ output
    @property
    def is_fitted(self) -> bool:
        return self.vectors is not None and self.vocab is not None

    def item_embeddings(self) -> EmbeddingSet:
        """The input vectors as an EmbeddingSet (kind "item2vec", metric cosine, not normalised)."""
        self.require_fitted()
        last = self.history[-1] if self.history else {}
        metrics = {
            "backend": self.backend,
            "final_loss": last.get("loss"),
            "train_seconds": getattr(self, "train_seconds", None),
            "events_per_s_last_epoch": last.get("events_per_s"),
            "loss_per_epoch": [h["loss"] for h in self.history],
            "dropped": self.dropped,
        }
        return EmbeddingSet(
            self.vocab.ids,
            self.vectors,
            kind="item2vec",
            metric="cosine",
            normalized=False,
            config=self.config.model_dump(mode="json"),
            metrics=metrics,
        )

    def _row(self, item_id: str) -> int:
        if item_id in self.vocab:
            return self.vocab.index(item_id)
        seen = self._seen.get(item_id)
        if seen is None:
            raise KeyError(f"item {item_id!r} has no vector: it never occurs in the training data")
        if seen < self.config.min_count:
            raise KeyError(
                f"item {item_id!r} has no vector: seen {seen} times, below min_count={self.config.min_count}"
            )
        raise KeyError(f"item {item_id!r} has no vector: it only occurs in sessions with fewer than 2 events")

    def similar(self, item_id: str, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items by cosine, the item itself excluded.

        Returns ``(ids [k] object, scores [k] float32)``, best first.
        ``KeyError`` explains why an item has no vector.
        """
        self.require_fitted()
        if k < 1:
            raise ConfigError(f"similar: k must be >= 1, got {k}")
        row = self._row(item_id)
        unit = l2_normalize(self.vectors)
        scores = unit @ unit[row]
        scores[row] = -np.inf
        k = min(k, len(scores) - 1)
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self.vocab.ids[top], scores[top].astype(np.float32)

    def save_word2vec_format(self, path: str | os.PathLike) -> Path:
        """Write word2vec's text format (``"V D"`` header, one ``id v1 ... vD`` line per item).

        Readable by ``gensim.models.KeyedVectors.load_word2vec_format(path)``.
        Ids must not contain whitespace (the format splits on it).
        """
        self.require_fitted()
        ids = pl.Series("id", self.vocab.ids.tolist(), dtype=pl.String)
        bad = ids.str.contains(r"\s")
        if bad.any():
            raise RecembError(
                f"save_word2vec_format: item id {ids.filter(bad)[0]!r} contains whitespace, which the "
                "word2vec format cannot hold; use embeddings().save(dir) instead"
            )
        path = Path(path)
        # polars formats float32 with the shortest round-tripping repr, column-wise in Rust.
        frame = pl.DataFrame(self.vectors)
        values = frame.select(pl.concat_str([pl.col(c).cast(pl.String) for c in frame.columns], separator=" "))
        values = values.to_series()
        lines = (ids + " " + values).to_list()
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"{len(ids)} {self.vectors.shape[1]}\n")
                f.write("\n".join(lines))
                f.write("\n")
        return path

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings/`` (the EmbeddingSet) and ``model.json`` (config, history) atomically."""
        self.require_fitted()
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.item_embeddings().save(tmp / "embeddings")
            meta = self.model_meta(history=self.history, dropped=self.dropped, backend=self.backend)
            (tmp / "model.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Item2Vec:
        """An Item2Vec from :meth:`save`'s directory (vectors only: it can answer, not resume training)."""
        meta = cls.read_meta(directory)
        try:
            config = Item2VecConfig.model_validate(meta["config"])
        except pydantic.ValidationError as e:
            raise RecembError(
                f"{directory}: its item2vec settings do not fit this recemb ({e}); save it again"
            ) from None
        es = EmbeddingSet.load(Path(directory) / "embeddings")
        return cls.from_state(
            config, es.to_vocab(), np.asarray(es.vectors), meta.get("history"), meta.get("backend"), meta.get("dropped")
        )


def _epoch_seed(seed: int, epoch: int) -> int:
    """A distinct RNG seed per (seed, epoch), so seed s, epoch 1 never replays seed s+1, epoch 0."""
    return seed * 1_000_003 + epoch


def lr_range(cfg: Item2VecConfig, epoch: int) -> tuple[float, float]:
    """Learning rate at the start and end of 0-based ``epoch``: linear from alpha to min_alpha over all epochs."""
    a0 = cfg.alpha - (cfg.alpha - cfg.min_alpha) * epoch / cfg.epochs
    a1 = cfg.alpha - (cfg.alpha - cfg.min_alpha) * (epoch + 1) / cfg.epochs
    return a0, a1


def resolve_backend(cfg: Item2VecConfig) -> tuple[str, str]:
    """(backend, torch device) from the config; device is "" for numba."""
    if cfg.backend == "numba":
        return "numba", ""
    wants_cuda = cfg.device.startswith("cuda")
    if cfg.backend == "auto" and cfg.device == "cpu":
        return "numba", ""
    if importlib.util.find_spec("torch") is None:
        if cfg.backend == "torch" or wants_cuda:
            raise ConfigError(
                "item2vec.backend=torch needs PyTorch; install it (pip install torch) or set item2vec.backend=numba"
            )
        return "numba", ""
    import torch

    has_cuda = torch.cuda.is_available()
    if wants_cuda and not has_cuda:
        raise ConfigError(f"item2vec.device={cfg.device!r} but CUDA is not available; set item2vec.device=cpu")
    device = cfg.device if cfg.device != "auto" else ("cuda" if has_cuda else "cpu")
    if cfg.backend == "auto":
        return ("torch", device) if device.startswith("cuda") else ("numba", "")
    return "torch", device


def init_vectors(cfg: Item2VecConfig, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """gensim 4's initialisation: ``syn0`` ``[V, D]`` uniform in [-1, 1) / dim (from ``cfg.seed``), ``syn1`` zeros."""
    rng = np.random.default_rng(cfg.seed)
    syn0 = ((rng.random((n_items, cfg.dim), dtype=np.float32) * 2 - 1) / cfg.dim).astype(np.float32)
    return syn0, np.zeros((n_items, cfg.dim), dtype=np.float32)


class EpochRunner:
    """SGNS training state (``syn0``, ``syn1`` ``[V, D]``, sampling tables) advanced one pass at a time.

    :meth:`Item2Vec.fit` calls :meth:`run` once per epoch on the whole corpus;
    a data-parallel loop (``recemb.train.item2vec_ray``) calls it on its shard
    of sessions and synchronises :meth:`tensors` between calls. Sampling
    tables come from the *global* item counts, so every shard draws the same
    negatives distribution.
    """

    def __init__(
        self,
        config: Item2VecConfig,
        counts: np.ndarray,
        syn0: np.ndarray | None = None,
        syn1: np.ndarray | None = None,
    ):
        self.config = cfg = config
        self.backend, self.device = resolve_backend(cfg)
        if syn0 is None or syn1 is None:
            syn0, syn1 = init_vectors(cfg, len(counts))
        shape = (len(counts), cfg.dim)
        if syn0.shape != shape or syn1.shape != shape:
            raise RecembError(
                f"item2vec: state matrices have shapes {syn0.shape} / {syn1.shape}, expected {shape} "
                f"({len(counts)} items, dim {cfg.dim})"
            )
        keep = keep_probabilities(counts, cfg.sample)
        table = negative_table(counts, cfg.ns_exponent)
        if self.backend == "numba":
            self.syn0 = np.ascontiguousarray(syn0, dtype=np.float32)
            self.syn1 = np.ascontiguousarray(syn1, dtype=np.float32)
            self._keep, self._table = keep, table
            self._sig, self._logsig = sgns_cpu.sigmoid_tables()
        else:
            from recemb.models.item2vec.sgns_torch import TorchSGNS

            self._torch = TorchSGNS(syn0, syn1, keep, table, cfg, self.device)

    def run(
        self, indptr: np.ndarray, indices: np.ndarray, alpha_start: float, alpha_end: float, seed: int
    ) -> tuple[float, int]:
        """One pass over the sessions ``indptr [S+1]`` / ``indices [E]``; returns (loss sum, pairs)."""
        cfg = self.config
        if self.backend != "numba":
            return self._torch.epoch(indptr, indices, alpha_start, alpha_end, seed)
        # numba's thread count is process-global: re-assert ours in case another fit changed it.
        threads = sgns_cpu.set_threads(cfg.threads)
        bounds = sgns_cpu.shard_bounds(indptr, threads)
        loss, pairs, _ = sgns_cpu.train_epoch(
            self.syn0,
            self.syn1,
            indptr,
            indices,
            self._keep,
            self._table,
            self._sig,
            self._logsig,
            bounds,
            cfg.window,
            cfg.negatives,
            int(cfg.mode == "cbow"),
            int(cfg.shrink_windows),
            int(cfg.shared_negatives),
            alpha_start,
            alpha_end,
            seed,
        )
        return float(loss.sum()), int(pairs.sum())

    def tensors(self):
        """``(syn0, syn1)`` as torch tensors that share memory with the training state (for all-reduce)."""
        if self.backend != "numba":
            return self._torch.syn0, self._torch.syn1
        import torch

        return torch.from_numpy(self.syn0), torch.from_numpy(self.syn1)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(syn0, syn1)`` as ``[V, D]`` float32 numpy arrays (views for numba, host copies for torch)."""
        if self.backend == "numba":
            return self.syn0, self.syn1
        return self._torch.input_vectors(), self._torch.syn1.detach().cpu().numpy().astype(np.float32, copy=True)

    def input_vectors(self) -> np.ndarray:
        """The exported vectors: ``syn0`` ``[V, D]`` float32."""
        return self.arrays()[0]


def _seen_counts(data: pl.DataFrame | list[list[str]]) -> dict[str, int]:
    """Event count per item id in the raw training data (to explain missing vectors)."""
    if isinstance(data, pl.DataFrame):
        s = data["item_id"]
    else:
        s = pl.Series("item_id", list(data), dtype=pl.List(pl.String)).explode().drop_nulls()
    vc = s.value_counts(name="n")
    return dict(zip(vc["item_id"].to_list(), vc["n"].to_list()))
