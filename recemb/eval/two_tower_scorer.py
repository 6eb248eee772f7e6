"""The two-tower model as an evaluation Scorer (``eval.models: [two_tower]``).

``fit`` trains :class:`~recemb.models.two_tower.model.TwoTower` on the protocol's
train events with the catalogue as its item index space; ``score_queries``
runs the user tower on each query's items (oldest first, the latest
``history_length`` of them) and scores every catalogue item by cosine, the
same path an online query from recent items takes.

With ``two_tower.content`` on, items without a training event (the cold
items of P-COLD) get their vectors from content alone (see
recemb.models.two_tower.content). :data:`VARIANTS` switch the content parts
on and off over the configured section, for per-modality P-COLD rows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.eval.scorers import QueryBatch
from recemb.models.two_tower.config import TwoTowerConfig

# eval.models name -> two_tower.content parts switched on (None = the section as configured).
VARIANTS: dict[str, dict[str, bool] | None] = {
    "two_tower": None,
    "two_tower-text": {"text": True, "image": False},
    "two_tower-image": {"text": False, "image": True},
    "two_tower-both": {"text": True, "image": True},
}


def variant_config(config: TwoTowerConfig, variant: str) -> TwoTowerConfig:
    """``config`` with the content parts of ``variant`` (a key of :data:`VARIANTS`)."""
    parts = VARIANTS[variant]
    if not parts:
        return config
    return config.model_copy(update={"content": config.content.model_copy(update=parts)})


class TwoTowerScorer:
    """Two-tower fitted on the train events, queried through its user tower.

    Args:
        config: the ``two_tower:`` section.
        items, users: the dataset's items/users tables (item categories,
            user features); None = id features only.
        validation: held-out events whose Recall@K is logged per epoch
            (never trained on); None = no per-epoch validation.
        root, cache_dir: where ``image_path`` is relative to; where frozen
            image / sentence features are cached (content parts only).
    """

    def __init__(
        self,
        config: TwoTowerConfig,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        validation: pl.DataFrame | None = None,
        name: str = "two_tower",
        root=None,
        cache_dir=None,
    ):
        self.config, self.items, self.users, self.validation = config, items, users, validation
        self.name, self.root, self.cache_dir = name, root, cache_dir
        self.model = None
        self._item_vectors: np.ndarray | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> TwoTowerScorer:
        from recemb.models.two_tower.model import TwoTower

        self.model = TwoTower(self.config).fit(
            train,
            items=self.items,
            users=self.users,
            catalogue=catalogue,
            validation=self.validation,
            root=self.root,
            cache_dir=self.cache_dir,
        )
        self._item_vectors = self.model.item_embeddings().vectors  # [N, D], rows = catalogue indices
        return self

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` cosine of each query's user vector with every catalogue item."""
        if self.model is None:
            raise RuntimeError("TwoTowerScorer: call fit() before score_queries()")
        users = self.model.encode_histories(queries.items, queries.offsets, queries.user_ids)
        return (users @ self._item_vectors.T).astype(np.float32, copy=False)
