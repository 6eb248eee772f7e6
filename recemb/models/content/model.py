"""``ContentModel``: item vectors from content alone, aligned to a behavioural space.

    model = ContentModel(ContentConfig(), Item2VecConfig()).fit(events, items=items, root=data_dir)
    model.item_embeddings()     # EmbeddingSet [N, D]: EVERY item of the items table, cold ones included
    model.encode([["i1", "i2"]])  # [1, D] pooled content vectors of the history

``fit`` trains item2vec on the events (or takes a given behavioural
EmbeddingSet, ``target``, e.g. the run's ``item2vec/embeddings``) and aligns a
:class:`~recemb.models.content.encoder.ContentEncoder` to it
(recemb.models.content.align). Queries pool the content vectors of a
history, so warm and cold items compete on equal terms (P-COLD's
``content`` row).

``random_control=True`` replaces the content vectors by seeded random unit
vectors: the control row (``content-random``) any content signal must beat.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydantic

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet
from recemb.errors import DataValidationError, RecembError
from recemb.io import atomic_dir, write_json
from recemb.models.content.config import ContentConfig
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.protocol import EmbeddingModel, EpochHook
from recemb.vectors import l2_normalize


class ContentModel(EmbeddingModel):
    """Content encoders aligned to item2vec (the ``content`` registry model).

    Args:
        config: the ``content:`` section (parts, encoder, training).
        item2vec: the ``item2vec:`` section of the behavioural vectors fitted
            on the events when no ``target`` is given.
        target: a behavioural EmbeddingSet to align to instead of fitting item2vec.
        random_control: random unit vectors instead of content (control row).
    """

    name = "content"
    covers_unseen_items = True

    def __init__(
        self,
        config: ContentConfig | None = None,
        item2vec: Item2VecConfig | None = None,
        target: EmbeddingSet | None = None,
        random_control: bool = False,
    ):
        self.config = config or ContentConfig()
        self.item2vec = item2vec or Item2VecConfig()
        self.target = target
        self.random_control = random_control
        self.info: dict[str, Any] = {}
        self._items: EmbeddingSet | None = None

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
    ) -> ContentModel:
        """Align content to item2vec fitted on ``events`` (or to ``target``); vectors for every item.

        ``items`` is required (title, text, category, image_path); with a
        ``catalogue`` only its items are encoded. ``on_epoch`` is called once, at the end.
        """
        self._fit(events, items, catalogue, root, cache_dir)
        if on_epoch is not None:
            on_epoch(1, self)
        return self

    def _fit(
        self,
        events: pl.DataFrame,
        items: pl.DataFrame | None,
        catalogue: Vocab | None,
        root: str | os.PathLike | None,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        from recemb.models.item2vec.model import Item2Vec
        from recemb.train.content import content_embeddings

        if items is None or items.height == 0:
            raise DataValidationError("ContentModel.fit: no items table; content encoders need items.parquet")
        if events.height == 0 and self.target is None:
            raise DataValidationError("ContentModel.fit: the events table is empty; nothing to align content to")
        behaviour = self.target if self.target is not None else Item2Vec(self.item2vec).fit(events).item_embeddings()
        if catalogue is not None:
            ids = pl.Series("item_id", catalogue.ids.tolist(), dtype=pl.String)
            items = items.filter(pl.col("item_id").is_in(ids.implode()))
        if self.random_control:
            rng = np.random.default_rng(self.config.seed)
            ids_list = items["item_id"].to_list()
            vectors = l2_normalize(rng.standard_normal((len(ids_list), behaviour.dim)).astype(np.float32))
            self._items = EmbeddingSet(ids_list, vectors, kind="content-random", normalized=True)
            self.info = {"random": True}
            return
        cache = Path(cache_dir) if cache_dir else None
        root_path = Path(root) if root else None
        self._items, self.encoder, self.info = content_embeddings(items, root_path, behaviour, self.config, cache)

    @property
    def is_fitted(self) -> bool:
        return self._items is not None

    def item_embeddings(self) -> EmbeddingSet:
        """``[N, D]`` unit-norm content vectors of every (catalogue) item of the items table."""
        if self._items is None:
            raise self.not_fitted_error()
        return self._items

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings/`` and ``model.json`` (config, alignment metrics) atomically."""
        items = self.item_embeddings()
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            items.save(tmp / "embeddings")
            write_json(tmp / "model.json", self.model_meta(item2vec=self.item2vec.model_dump(mode="json")))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ContentModel:
        """A ContentModel from :meth:`save`'s directory (its vectors; the encoder is not needed to answer)."""
        meta = cls.read_meta(directory)
        try:
            model = cls(ContentConfig.model_validate(meta["config"]), Item2VecConfig.model_validate(meta["item2vec"]))
        except (pydantic.ValidationError, KeyError) as e:
            raise RecembError(
                f"{directory}: its content settings do not fit this recemb ({e}); save it again"
            ) from None
        model._items = EmbeddingSet.load(Path(directory) / "embeddings")
        return model
