"""The two-tower model as an evaluation Scorer (``eval.models: [two_tower]``).

``fit`` trains :class:`~recemb.models.two_tower.TwoTower` on the protocol's
train events with the catalogue as its item index space; ``score_queries``
runs the user tower on each query's items (oldest first, the latest
``history_length`` of them) and scores every catalogue item by cosine, the
same path an online query from recent items takes.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.eval.scorers import QueryBatch
from recemb.models.two_tower.config import TwoTowerConfig


class TwoTowerScorer:
    """Two-tower fitted on the train events, queried through its user tower.

    Args:
        config: the ``two_tower:`` section.
        items, users: the dataset's items/users tables (item categories,
            user features); None = id features only.
        validation: held-out events whose Recall@K is logged per epoch
            (never trained on); None = no per-epoch validation.
    """

    def __init__(self, config: TwoTowerConfig, items: pl.DataFrame | None = None,
                 users: pl.DataFrame | None = None, validation: pl.DataFrame | None = None,
                 name: str = "two_tower"):
        self.config, self.items, self.users, self.validation = config, items, users, validation
        self.name = name
        self.model = None
        self._item_vectors: np.ndarray | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> "TwoTowerScorer":
        from recemb.models.two_tower.model import TwoTower

        self.model = TwoTower(self.config).fit(
            train, items=self.items, users=self.users, catalogue=catalogue, validation=self.validation
        )
        self._item_vectors = self.model.item_embeddings().vectors  # [N, D], rows = catalogue indices
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` cosine of each query's user vector with every catalogue item."""
        if self.model is None:
            raise RuntimeError("TwoTowerScorer: call fit() before score_queries()")
        users = self.model.encode_histories(queries.items, queries.offsets, queries.user_ids)
        return (users @ self._item_vectors.T).astype(np.float32, copy=False)
