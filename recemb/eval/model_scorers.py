"""Scorers that train a recemb model on the protocol's train split.

Evaluation must never see test events, so a model is evaluated by fitting
it inside the protocol runner (``fit(train, catalogue)``), exactly like the
baselines, and scoring through :class:`EmbeddingScorer`. The EmbeddingSets
that ``recemb train`` writes are trained on all events (for serving) and
are therefore not what the evaluation tables report.
"""

from __future__ import annotations

import polars as pl

from recemb.data.vocab import Vocab
from recemb.eval.embedding_scorer import EmbeddingScorer
from recemb.eval.scorers import QueryBatch
from recemb.models.item2vec.config import Item2VecConfig


class Item2VecScorer:
    """Item2vec fitted on the train events, queried like an item EmbeddingSet.

    Args:
        config: the ``item2vec:`` section.
        unit: what a training "sentence" is: ``"session"`` (session ids) or
            ``"user"`` (each user's whole train history, the usual choice for
            rating data such as MovieLens).
        query, last_n, scoring: as :class:`EmbeddingScorer`.
    """

    def __init__(
        self,
        config: Item2VecConfig,
        unit: str = "session",
        query: str = "mean_last_n",
        last_n: int = 5,
        scoring: str = "cosine",
        name: str = "item2vec",
    ):
        self.config, self.unit, self.name = config, unit, name
        self.query, self.last_n, self.scoring = query, last_n, scoring
        self.model = None
        self._inner: EmbeddingScorer | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> Item2VecScorer:
        from recemb.models.item2vec.model import Item2Vec

        events = train.with_columns(session_id=pl.col("user_id")) if self.unit == "user" else train
        self.model = Item2Vec(self.config).fit(events)
        self._inner = EmbeddingScorer(
            self.model.embeddings(), query=self.query, last_n=self.last_n, scoring=self.scoring, name=self.name
        ).fit(train, catalogue)
        return self

    def score_queries(self, queries: QueryBatch):
        if self._inner is None:
            raise RuntimeError("Item2VecScorer: call fit() before score_queries()")
        return self._inner.score_queries(queries)
