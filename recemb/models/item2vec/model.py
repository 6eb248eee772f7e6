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
from recemb.io import atomic_dir, atomic_path, write_json
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.item2vec.corpus import Corpus, build_corpus
from recemb.models.item2vec.epochs import EpochRunner, train_epochs
from recemb.models.protocol import EmbeddingModel, EpochHook, epoch_observer

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

        ``on_epoch(epoch, model)`` (the contract's hook, in ``side``) sees the
        vectors after each epoch. Empty sessions and sessions of one event are skipped (no context);
        items seen fewer than ``min_count`` times get no vector. Both are
        counted in ``self.dropped`` and logged. Returns ``self``.
        """
        from recemb.train.runner import WorkerContext

        cfg = self.config
        if isinstance(data, Corpus):
            corpus, self._seen = data, {}
        else:
            corpus = build_corpus(data, min_count=cfg.min_count)
            self._seen = _seen_counts(data)
        self.dropped = dict(corpus.dropped)
        self.vocab = corpus.vocab
        started = time.perf_counter()
        runner = EpochRunner(cfg, corpus.vocab.counts)
        self.backend = runner.backend
        hook: EpochHook | None = side.get("on_epoch")
        ctx = WorkerContext(on_epoch=epoch_observer(hook))

        def snapshot() -> Item2Vec:
            return Item2Vec.from_state(cfg, corpus.vocab, runner.input_vectors(), backend=runner.backend)

        # The data-parallel loop with one worker and no checkpoints: the same floats as one Ray worker.
        self.history = train_epochs(ctx, runner, corpus.indptr, corpus.indices, corpus.n_events, snapshot=snapshot)
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

    def _fitted(self) -> tuple[Vocab, np.ndarray]:
        """``(vocab, vectors [V, D])`` of a fitted or loaded model; :class:`NotFittedError` otherwise."""
        if self.vocab is None or self.vectors is None:
            raise self.not_fitted_error()
        return self.vocab, self.vectors

    def item_embeddings(self) -> EmbeddingSet:
        """The input vectors as an EmbeddingSet (kind "item2vec", metric cosine, not normalised)."""
        vocab, vectors = self._fitted()
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
            vocab.ids,
            vectors,
            kind="item2vec",
            metric="cosine",
            normalized=False,
            config=self.config.model_dump(mode="json"),
            metrics=metrics,
        )

    def _row(self, item_id: str) -> int:
        vocab, _ = self._fitted()
        if item_id in vocab:
            return vocab.index(item_id)
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
        vocab, vectors = self._fitted()
        if k < 1:
            raise ConfigError(f"similar: k must be >= 1, got {k}")
        row = self._row(item_id)
        unit = l2_normalize(vectors)
        scores = unit @ unit[row]
        scores[row] = -np.inf
        k = min(k, len(scores) - 1)
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return vocab.ids[top], scores[top].astype(np.float32)

    def save_word2vec_format(self, path: str | os.PathLike) -> Path:
        """Write word2vec's text format (``"V D"`` header, one ``id v1 ... vD`` line per item).

        Readable by ``gensim.models.KeyedVectors.load_word2vec_format(path)``.
        Ids must not contain whitespace (the format splits on it).
        """
        vocab, vectors = self._fitted()
        ids = pl.Series("id", vocab.ids.tolist(), dtype=pl.String)
        bad = ids.str.contains(r"\s")
        if bad.any():
            raise RecembError(
                f"save_word2vec_format: item id {ids.filter(bad)[0]!r} contains whitespace, which the "
                "word2vec format cannot hold; use embeddings().save(dir) instead"
            )
        path = Path(path)
        # polars formats float32 with the shortest round-tripping repr, column-wise in Rust.
        frame = pl.DataFrame(vectors)
        values = frame.select(
            pl.concat_str([pl.col(c).cast(pl.String) for c in frame.columns], separator=" ")
        ).to_series()
        lines = (ids + " " + values).to_list()
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"{len(ids)} {vectors.shape[1]}\n")
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
            write_json(
                tmp / "model.json", self.model_meta(history=self.history, dropped=self.dropped, backend=self.backend)
            )
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


def _seen_counts(data: pl.DataFrame | list[list[str]]) -> dict[str, int]:
    """Event count per item id in the raw training data (to explain missing vectors)."""
    if isinstance(data, pl.DataFrame):
        s = data["item_id"]
    else:
        s = pl.Series("item_id", list(data), dtype=pl.List(pl.String)).explode().drop_nulls()
    vc = s.value_counts(name="n")
    return dict(zip(vc["item_id"].to_list(), vc["n"].to_list()))
