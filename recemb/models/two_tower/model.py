"""``TwoTower``: fit on canonical tables, emit EmbeddingSets, export the user tower.

    model = TwoTower(TwoTowerConfig(epochs=10)).fit(events, items=items)
    model.item_embeddings()            # EmbeddingSet [N, D], every catalogue item
    model.user_embeddings(events)      # EmbeddingSet [U, D], from each user's latest history
    model.save_user_tower("user_tower/")
    tower = load_user_tower("user_tower/")   # torch.load(weights_only=True); no torchrec needed
    tower.encode([["50", "172"], []])        # [B, D] queries from recent item ids

Training itself (optimisers, sharding, checkpoints) is in
recemb.train.two_tower, the same loop a Ray Train worker runs; after ``fit``
the model holds a plain-torch copy of the towers (``self.net``) on which
every export (recemb.models.two_tower.encode) runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydantic
import torch

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.models.content.config import ItemContentConfig
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.encode import (
    USER_TOWER_FORMAT,
    encode_histories,
    encode_users,
    item_embedding_set,
    save_user_tower,
    user_embedding_set,
)
from recemb.models.two_tower.features import Collator, FeatureSpace
from recemb.models.two_tower.towers import TwoTowerNet, UserTower, tower_tables


class TwoTower:
    """The two-tower retrieval model (towers + RetrievalTask), trained in-process.

    Args:
        config: the ``two_tower:`` section (``config.content`` turns on the
            item tower's text / image parts, read from ``fit``'s items table).
    """

    def __init__(self, config: TwoTowerConfig | None = None):
        self.config = config or TwoTowerConfig()
        self.space: FeatureSpace | None = None
        self.collate: Collator | None = None
        self.net: TwoTowerNet | None = None
        self.history: list[dict[str, Any]] = []

    def fit(
        self,
        events: pl.DataFrame,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        catalogue: Vocab | None = None,
        validation: pl.DataFrame | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> TwoTower:
        """Train on canonical ``events`` (every interaction a target after its history).

        The same code path as a Ray Train worker (:func:`recemb.train.two_tower.fit_two_tower`),
        in this process.

        Args:
            items, users: canonical items/users tables (categories, user
                features, content: text fields and ``image_path``).
            root, cache_dir: where ``image_path`` is relative to; where
                frozen image / sentence features are cached.
            catalogue: fixes the item index space (evaluation); default: the
                event items, then the items table's other items.
            validation: one held-out event per user; its Recall@K is reported per epoch.
            checkpoint_dir: write ``checkpoint_epoch_NNNN/`` there after each epoch (the
                newest 2 kept) and resume from the newest.
        """
        from recemb.train.checkpoints import LocalCheckpoints
        from recemb.train.runner import WorkerContext
        from recemb.train.two_tower import fit_two_tower

        ctx = WorkerContext(checkpoints=LocalCheckpoints(checkpoint_dir) if checkpoint_dir else None)
        fitted = fit_two_tower(
            self.config, events, items, users, catalogue, validation, root=root, cache_dir=cache_dir, ctx=ctx
        )
        self.space, self.net, self.history = fitted.space, fitted.net, fitted.history
        self.collate = Collator(self.space)
        return self

    def _require_fit(self) -> None:
        if self.net is None:
            raise RecembError("TwoTower: call fit() first")

    # ---------------------------------------------------------------- export
    def item_embeddings(self, drop: tuple[str, ...] = ()) -> EmbeddingSet:
        """Every catalogue item's ``[N, D]`` unit-norm vector (metric cosine).

        Items that were never a training target get theirs from their other
        parts (content, categories); ``drop=("item_id",)`` does that for all.
        """
        self._require_fit()
        return item_embedding_set(self.net, self.space, self.history, drop)

    def encode_histories(
        self, items: np.ndarray, offsets: np.ndarray, user_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """``[B, D]`` user vectors from CSR histories of item indices (``offsets`` ``[B + 1]``)."""
        self._require_fit()
        return encode_histories(self.net, self.space, items, offsets, user_ids)

    def user_embeddings(self, events: pl.DataFrame) -> EmbeddingSet:
        """One ``[U, D]`` vector per user of ``events``, from their latest ``history_length`` items."""
        self._require_fit()
        return user_embedding_set(self.net, self.space, events)

    def save_user_tower(self, out_dir: str | os.PathLike) -> Path:
        """Write ``state_dict.pt`` (plain tensors), ``config.json`` and the vocabularies, atomically."""
        self._require_fit()
        return save_user_tower(self.net.user_tower, self.space, out_dir)


class UserTowerModel:
    """A loaded user tower: recent item ids -> ``[B, D]`` query vectors (plain torch).

    Attributes:
        items: the item Vocab the tower was trained with.
        config: the TwoTowerConfig.
    """

    def __init__(self, tower: UserTower, space: FeatureSpace):
        self.tower = tower.eval()
        self.space = space
        self.items = space.items
        self.config = space.config
        self.collate = Collator(space)

    @property
    def dim(self) -> int:
        return self.config.dim

    def encode(self, histories: list[list[str]]) -> np.ndarray:
        """``[B, D]`` unit-norm vectors, one per history of item ids (oldest first; unknown ids skipped)."""
        flat = [i for h in histories for i in h]
        idx = self.items.lookup(pl.Series("id", flat, dtype=pl.String)) if flat else np.zeros(0, np.int64)
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        keep = idx >= 0
        # Drop unknown ids and shrink each window accordingly.
        owner = np.repeat(np.arange(len(histories)), lengths)
        lengths = np.bincount(owner[keep], minlength=len(histories)).astype(np.int64)
        idx = idx[keep]
        starts = np.cumsum(lengths) - lengths
        return encode_users(self.tower, self.collate, idx, starts, lengths)


def load_user_tower(path: str | os.PathLike) -> UserTowerModel:
    """Load a saved user tower (``torch.load(weights_only=True)``); checks format and files first."""
    path = Path(path)
    for name in ("config.json", "state_dict.pt", "items.parquet"):
        if not (path / name).is_file():
            raise RecembError(f"{path / name}: missing; re-export the user tower (`recemb train two-tower CONFIG`)")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format") != USER_TOWER_FORMAT:
        raise RecembError(f"{path}: user tower format {meta.get('format')!r} is not {USER_TOWER_FORMAT}; re-export it")
    section = dict(meta["two_tower"])
    # Towers written before two_tower.content existed carry the old, always unused content hook's keys.
    for obsolete in ("content_dim", "content_source"):
        section.pop(obsolete, None)
    try:
        config = TwoTowerConfig.model_validate(section)
    except pydantic.ValidationError as e:
        raise RecembError(
            f"{path / 'config.json'}: its two_tower settings do not fit this recemb ({e.error_count()} error(s), "
            f"first: {e.errors()[0]['msg']}); re-export the user tower (`recemb train two-tower CONFIG`)"
        ) from None
    # The user tower reads item ids only: no item categories or content to load.
    space = FeatureSpace(
        Vocab.load(path / "items.parquet"),
        config.model_copy(update={"item_categories": False, "content": ItemContentConfig()}),
    )
    space.config = config
    space.user_columns = list(config.user_features)
    space.user_vocabs = [Vocab.load(path / f"user_{c}.parquet") for c in config.user_features]
    user_tables, _ = tower_tables(meta["table_sizes"], meta["user_keys"], ["item_id"], config.embedding_dim)
    tower = UserTower(user_tables, meta["user_keys"], list(config.mlp), config.dim, config.dropout, "torch")
    state = torch.load(path / "state_dict.pt", map_location="cpu", weights_only=True)
    tower.load_state_dict(state)
    return UserTowerModel(tower, space)
