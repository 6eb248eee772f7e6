"""Any registered model as an evaluation Scorer, fitted on the protocol's train split.

Evaluation must never see test events, so a model is evaluated by fitting it
inside the protocol runner (``fit(train, catalogue)``), exactly like the
baselines. The EmbeddingSets that ``recemb train`` writes are trained on all
events (for serving) and are therefore not what the evaluation tables report.

Queries go through the model contract (recemb.models.protocol): a model
whose query pools its own item vectors (``pooled_query``) is scored as an
item EmbeddingSet (:class:`EmbeddingScorer`, with ``eval.query``); any other
model encodes each query's history with ``encode_histories`` (e.g. the
two-tower's user tower) and scores the catalogue by ``eval.scoring``; a
model with ``own_scores`` (e.g. the sequence model's repeat path) scores the
catalogue itself through ``score_histories``.

Every model also offers its item vectors pooled as queries
(:meth:`ModelScorer.query_choices`): ``recemb evaluate`` picks one on the
protocol's validation split where ``eval.select_query`` says so
(recemb.eval.query_choice). A next-click encoder is not always the best
query for a slate shown days later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, NotFittedError
from recemb.eval.embedding_scorer import MISSING_SCORE, CatalogueMatrix, EmbeddingScorer
from recemb.eval.scorers import QueryBatch
from recemb.models.protocol import EmbeddingModel
from recemb.pooling import QUERY_MODES, QueryMode
from recemb.vectors import l2_normalize

OWN_QUERY = "model"  # a query choice: the model's own encoder (user tower, sequence state)


class ModelScorer:
    """A model built by ``build()``, fitted on the train events, scored through its contract.

    Args:
        build: returns a fresh, unfitted model (one per ``fit``).
        name: the row label in the tables.
        unit: what a training sequence is: ``"session"`` (session ids) or
            ``"user"`` (each user's whole train history, e.g. MovieLens).
        query, last_n, scoring: as :class:`EmbeddingScorer` (``eval.query``, ``eval.scoring``).
        side: side inputs of ``fit`` (``items``, ``users``, ``root``, ``cache_dir``).
    """

    def __init__(
        self,
        build: Callable[[], EmbeddingModel],
        name: str,
        unit: Literal["session", "user"] = "session",
        query: QueryMode = "mean_last_n",
        last_n: int = 5,
        scoring: Literal["cosine", "dot"] = "cosine",
        side: dict[str, Any] | None = None,
    ):
        self.build, self.name, self.unit = build, name, unit
        self.query, self.last_n, self.scoring = query, last_n, scoring
        self.side = dict(side or {})
        self.model: EmbeddingModel | None = None
        self.own_query = True  # a model with its own query encoder uses it (False: pool its item vectors)
        self._pooled: EmbeddingScorer | None = None
        self._items: CatalogueMatrix | None = None
        self._rows: np.ndarray | None = None  # [N] model item row of each catalogue item (-1: none)
        self._fitted_on: tuple[pl.DataFrame, Vocab] | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab, on_epoch: Callable[[int], None] | None = None) -> ModelScorer:
        """Fit a fresh model on ``train``; ``on_epoch(epoch)`` after each epoch, with this scorer
        already scoring the model as trained so far (a tuning trial's validation, recemb.tune)."""
        events = train.with_columns(session_id=pl.col("user_id")) if self.unit == "user" else train

        side = dict(self.side)
        if on_epoch is not None:

            def epoch_done(epoch: int, model: EmbeddingModel) -> None:
                self._attach(model, train, catalogue)
                on_epoch(epoch)

            side["on_epoch"] = epoch_done
        model = self.build().fit(events, catalogue=catalogue, **side)
        return self._attach(model, train, catalogue)

    def _attach(self, model: EmbeddingModel, train: pl.DataFrame, catalogue: Vocab) -> ModelScorer:
        """Score with the fitted ``model`` from now on."""
        self.model, self._pooled, self._items, self._rows = model, None, None, None
        self._fitted_on = (train, catalogue)
        items = model.item_embeddings()
        if model.pooled_query or not self.own_query:
            self._pooled = EmbeddingScorer(
                items, query=self.query, last_n=self.last_n, scoring=self.scoring, name=self.name
            ).fit(train, catalogue)
        elif model.own_scores:
            self._rows = items.lookup(pl.Series("id", catalogue.ids.tolist(), dtype=pl.String))
        else:
            self._items = CatalogueMatrix(items, catalogue, self.scoring, f"ModelScorer {self.name!r}")
            self._rows = items.lookup(pl.Series("id", catalogue.ids.tolist(), dtype=pl.String))
        return self

    @property
    def pools_queries(self) -> bool:
        """True when the fitted model's queries pool its item vectors (``query``/``last_n`` apply)."""
        return self._pooled is not None

    def set_query(self, query: QueryMode, last_n: int) -> None:
        """Pool queries another way from now on (no refit: the item vectors stay)."""
        if query not in QUERY_MODES or last_n < 1:
            raise ConfigError(f"ModelScorer {self.name!r}: query must be one of {QUERY_MODES} and last_n >= 1")
        self.query, self.last_n = query, last_n
        if self._pooled is not None:  # it reads both per batch
            self._pooled.query, self._pooled.last_n = query, last_n

    def query_choices(self) -> tuple[str, ...]:
        """The queries this fitted model can score with: ``"model"`` (its own encoder, where it has one)
        and each pooling of :data:`~recemb.pooling.QUERY_MODES` over its item vectors."""
        if self.model is None:
            raise NotFittedError(f"ModelScorer {self.name!r}: fit it before asking for its query choices")
        return QUERY_MODES if self.model.pooled_query else (OWN_QUERY, *QUERY_MODES)

    def use_query(self, choice: str) -> None:
        """Score with ``choice`` (one of :meth:`query_choices`) from now on, in this fit and the next ones."""
        if choice not in self.query_choices():
            raise ConfigError(f"ModelScorer {self.name!r}: query {choice!r} is not one of {self.query_choices()}")
        own = choice == OWN_QUERY
        if not own:
            self.set_query(choice, self.last_n)  # type: ignore[arg-type]  # checked above
        if own != self.own_query:
            self.own_query = own
            if self.model is not None and self._fitted_on is not None:
                self._attach(self.model, *self._fitted_on)

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` float32 scores of every catalogue item for each query."""
        if self._pooled is not None:
            return self._pooled.score_queries(queries)
        if self.model is None or self._rows is None:
            raise NotFittedError(f"ModelScorer {self.name!r}: call fit(train, catalogue) before score_queries")
        if self._items is None:  # own_scores: the model ranks its items; catalogue items it lacks come last
            rows = self._rows[queries.items]
            scores = self.model.score_histories(rows, queries.offsets, queries.user_ids, ts=queries.ts, at=queries.at)
            known = self._rows >= 0
            out = np.full((len(queries), len(self._rows)), MISSING_SCORE, dtype=np.float32)
            out[:, known] = scores[:, self._rows[known]]
            return out
        users = self.model.encode_histories(self._rows[queries.items], queries.offsets, queries.user_ids)
        return self._items.score(l2_normalize(users) if self.scoring == "cosine" else users)
