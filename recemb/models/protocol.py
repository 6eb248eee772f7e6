"""The model contract: what every recemb embedding model implements.

A model learns from canonical events (DESIGN.md §2) and gives back

- item vectors as an :class:`~recemb.embeddings.EmbeddingSet` (``item_embeddings``),
- a query encoder: histories of items -> ``[B, D]`` query vectors in the same
  space (``encode_histories`` on rows of the item set, ``encode`` on item ids),
- ``save`` / ``load`` of a directory that holds no pickles.

Usage, the same for every registered model::

    model = Item2Vec(Item2VecConfig(epochs=20)).fit(events)
    items = model.item_embeddings()                  # EmbeddingSet [N, D]
    q = model.encode([["i1", "i7"], ["i3"]])         # [2, D] float32
    model.save("out/item2vec")
    same = Item2Vec.load("out/item2vec")

What every model documents and the shared contract tests (``tests/model_contract.py``)
check:

- before ``fit`` (or ``load``) every output method raises :class:`NotFittedError`;
- ``fit`` on an empty events table raises :class:`~recemb.errors.DataValidationError`;
- ids a model has no vector for are skipped in a history; a history with no
  known item encodes to the zero vector (callers fall back to popularity);
- items without events are covered or not as ``covers_unseen_items`` says:
  content-aware models give every catalogue item a vector, id-only ones
  leave it out of ``item_embeddings``.

A new model subclasses :class:`EmbeddingModel` and gets one row in the
registry (recemb.stages.registry); see docs/adding-a-model.md.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet
from recemb.errors import NotFittedError, RecembError
from recemb.pooling import QUERY_MODES, QueryMode, csr_weights, weighted_mean
from recemb.vectors import l2_normalize

MODEL_FILE = "model.json"
MODEL_FORMAT = 1

# ``fit(..., on_epoch=hook)``: ``hook(epoch, model)`` after each 1-based epoch, with the model as
# trained so far (fitted: every output method works). Tuning trials score it on their validation split.
EpochHook = Callable[[int, "EmbeddingModel"], None]


def epoch_observer(
    hook: EpochHook | None, build: Callable[[Any], EmbeddingModel] | None = None
) -> Callable[[int, Callable[[], Any]], None] | None:
    """The training loop's ``WorkerContext.on_epoch`` for a fit's ``on_epoch`` hook (None: none).

    The loop hands a snapshot function (called only when there is a hook); ``build`` turns
    what it returns (the loop's state) into the model, so the loop never imports the model.
    """
    if hook is None:
        return None
    make = build or (lambda state: state)
    return lambda epoch, snapshot: hook(epoch, make(snapshot()))


class EmbeddingModel(ABC):
    """Base class of every embedding model (module docstring).

    Class attributes a model sets:
        name: its registry name (``"item2vec"``), also written into saved models.
        pooled_query: True when a query is a weighted pooling of the model's own
            item vectors (then ``encode_histories`` is the default below, and any
            caller may pool the item set itself); False when the model has its
            own query encoder (e.g. a user tower).
        covers_unseen_items: True when ``item_embeddings`` has a vector for
            catalogue items without events (from content or categories); a
            model whose settings decide it sets it per instance.
        own_scores: True when :meth:`score_histories` is more than the query
            vector against the item vectors (e.g. a repeat path over the
            history); callers that rank a whole catalogue then use it.
    """

    name: ClassVar[str]
    pooled_query: ClassVar[bool] = True
    covers_unseen_items: bool = False
    own_scores: ClassVar[bool] = False

    @abstractmethod
    def fit(
        self,
        events: pl.DataFrame,
        *,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        catalogue: Vocab | None = None,
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        on_epoch: EpochHook | None = None,
    ) -> Self:
        """Train on canonical ``events``; return ``self``.

        Args:
            events: canonical events (train part only under evaluation).
            items, users: canonical side tables; models that read no side
                features ignore them.
            catalogue: fixes the item space (evaluation); default: the items
                the model sees.
            root: where the items table's ``image_path`` is relative to.
            cache_dir: where frozen content features are cached.
            on_epoch: ``on_epoch(epoch, model)`` after each epoch with the model as
                trained so far (:data:`EpochHook`); a model without epochs calls
                it once, after fitting.
        """

    def prepare_side(
        self,
        items: pl.DataFrame | None = None,
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        """Compute and cache in ``cache_dir`` the frozen side features ``fit`` would compute (e.g.
        pretrained text or image features), so that many fits in parallel (tuning trials) read them
        instead of each computing them. The default: nothing to prepare."""
        return None

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """True after ``fit`` or ``load``."""

    @abstractmethod
    def item_embeddings(self) -> EmbeddingSet:
        """Item vectors ``[N, D]`` float32 with their string ids."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted model to ``directory`` atomically (no pickles); return it."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | os.PathLike) -> Self:
        """A fitted model from :meth:`save`'s directory; clear error if it is not one."""

    # ------------------------------------------------------------------ queries
    def encode_histories(
        self,
        items: np.ndarray,
        offsets: np.ndarray,
        user_ids: np.ndarray | None = None,
        *,
        query: QueryMode = "mean_last_n",
        last_n: int = 5,
    ) -> np.ndarray:
        """``[B, D]`` float32 query vectors from CSR histories of item rows.

        Args:
            items: ``[T]`` int64 rows of :meth:`item_embeddings`, oldest first
                within a history; ``-1`` marks an item without a vector (skipped).
            offsets: ``[B + 1]`` int64; history b is ``items[offsets[b]:offsets[b + 1]]``.
            user_ids: ``[B]`` user ids, for models with user features (else ignored).
            query, last_n: how a pooled query weighs the history (recemb.pooling);
                models with their own encoder ignore them.

        The default pools the item vectors (unit-normalised first under cosine)
        and returns unit-norm queries under cosine; an empty history gives zeros.
        """
        self.require_fitted()
        if query not in QUERY_MODES:
            raise RecembError(f"query must be one of {QUERY_MODES}, got {query!r}")
        es = self.item_embeddings()
        vectors = np.asarray(es.vectors, dtype=np.float32)
        cosine = es.metric == "cosine"
        matrix = l2_normalize(vectors) if cosine else vectors
        items, offsets = _checked_csr(items, offsets, len(es))
        # Row -1 (no vector) maps onto an appended all-zero, never-known row.
        known = np.ones(len(es) + 1, dtype=bool)
        known[-1] = False
        matrix = np.vstack([matrix, np.zeros((1, es.dim), dtype=np.float32)])
        weights = csr_weights(items, offsets, known, query, last_n)
        q = weighted_mean(matrix, items, offsets, weights)
        return l2_normalize(q) if cosine else q

    def score_histories(
        self,
        items: np.ndarray,
        offsets: np.ndarray,
        user_ids: np.ndarray | None = None,
        *,
        ts: np.ndarray | None = None,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[B, N]`` float32 scores of every row of :meth:`item_embeddings` for CSR histories.

        ``ts`` ``[T]``: the history items' event times in seconds; ``at`` ``[B]``:
        each query's time; for models that read time gaps (None: unknown).
        The default: :meth:`encode_histories` against the item vectors under
        the set's metric (cosine: unit rows). Models with ``own_scores`` override it.
        """
        es = self.item_embeddings()
        vectors = np.asarray(es.vectors, dtype=np.float32)
        matrix = l2_normalize(vectors) if es.metric == "cosine" else vectors
        return (self.encode_histories(items, offsets, user_ids) @ matrix.T).astype(np.float32, copy=False)

    def encode(
        self, histories: Sequence[Sequence[str]], *, query: QueryMode = "mean_last_n", last_n: int = 5
    ) -> np.ndarray:
        """``[B, D]`` float32 query vectors from histories of item ids (oldest first).

        Ids without a vector are skipped; a history with none gives the zero vector.
        """
        self.require_fitted()
        items, offsets = history_rows(self.item_vocab(), histories)
        known = items >= 0
        # Drop unknown ids here, so that encoders that read rows directly never see -1.
        owner = np.repeat(np.arange(len(histories)), np.diff(offsets))
        lengths = np.bincount(owner[known], minlength=len(histories)).astype(np.int64)
        out = self.encode_histories(items[known], np.concatenate([[0], np.cumsum(lengths)]), query=query, last_n=last_n)
        # Histories without a known item: zero, for every model (the documented contract).
        out[lengths == 0] = 0.0
        return out

    def item_vocab(self) -> Vocab:
        """The ids of :meth:`item_embeddings`' rows; read per query, so models that hold one return it."""
        return self.item_embeddings().to_vocab()

    # ------------------------------------------------------------------ helpers
    def require_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the model is fitted or loaded."""
        if not self.is_fitted:
            raise self.not_fitted_error()

    def not_fitted_error(self) -> NotFittedError:
        """The error :meth:`require_fitted` raises (for accessors that narrow their own state)."""
        return NotFittedError(f"{type(self).__name__}: call fit(events) or {type(self).__name__}.load(path) first")

    def model_meta(self, **extra: Any) -> dict[str, Any]:
        """The ``model.json`` content: format, model name, config (+ ``extra``)."""
        config = getattr(self, "config", None)
        return {
            "format": MODEL_FORMAT,
            "model": self.name,
            "config": config.model_dump(mode="json") if config is not None else None,
            **extra,
        }

    @classmethod
    def read_meta(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """``model.json`` of a saved model of this class; a clear error for anything else."""
        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise RecembError(f"{directory}: not a saved recemb model (no {MODEL_FILE}); save one with model.save(dir)")
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RecembError(f"{path}: unreadable ({e}); save the model again") from None
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise RecembError(f"{path}: model format {meta.get('format')!r} is not {MODEL_FORMAT}; save it again")
        if meta.get("model") != cls.name:
            raise RecembError(f"{path}: holds a {meta.get('model')!r} model, not {cls.name!r}; load it with its class")
        return meta


def history_rows(vocab: Vocab, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """``(items [T] int64 rows of vocab, -1 where unknown; offsets [B + 1])`` of id histories."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = [i for h in histories for i in h]
    if not flat:
        return np.zeros(0, dtype=np.int64), offsets
    return vocab.rows(flat), offsets


def _checked_csr(items: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    items = np.asarray(items, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(items):
        raise RecembError(
            f"encode_histories: offsets must be [B + 1] from 0 to len(items) = {len(items)}, got {offsets[:3]}..."
        )
    if np.any(np.diff(offsets) < 0):
        raise RecembError("encode_histories: offsets must be non-decreasing")
    if len(items) and (items.min() < -1 or items.max() >= n):
        raise RecembError(f"encode_histories: item rows must be in [-1, {n}); got {items.min()}..{items.max()}")
    return items, offsets
