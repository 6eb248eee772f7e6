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
from recemb.io import atomic_dir, write_json
from recemb.models.content.config import ItemContentConfig
from recemb.models.protocol import EmbeddingModel, EpochHook, epoch_observer
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.encode import (
    USER_TOWER_FORMAT,
    encode_users,
    item_embedding_set,
    save_user_tower,
    user_embedding_set,
)
from recemb.models.two_tower.features import Collator, FeatureSpace
from recemb.models.two_tower.towers import TwoTowerNet, UserTower, tower_tables


class TwoTower(EmbeddingModel):
    """The two-tower retrieval model (towers + RetrievalTask), the ``two_tower`` registry model.

    Contract (recemb.models.protocol): every catalogue item gets a vector
    (items never a training target from their categories and content,
    ``covers_unseen_items``); queries come from the user tower, not from
    pooling item vectors (``pooled_query`` is False). A loaded model holds
    the item vectors and the user tower: it answers, it does not resume training.

    Args:
        config: the ``two_tower:`` section (``config.content`` turns on the
            item tower's text / image parts, read from ``fit``'s items table).
    """

    name = "two_tower"
    pooled_query = False
    covers_unseen_items = True

    def __init__(self, config: TwoTowerConfig | None = None):
        self.config = config or TwoTowerConfig()
        self.space: FeatureSpace | None = None
        self.collate: Collator | None = None
        self.net: TwoTowerNet | None = None
        self.history: list[dict[str, Any]] = []
        self._loaded: tuple[EmbeddingSet, UserTower] | None = None  # (items, user tower) of load()

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
        on_epoch: EpochHook | None = None,
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
            on_epoch: the contract's hook: ``on_epoch(epoch, model so far)`` after each epoch.
        """
        from recemb.train.checkpoints import LocalCheckpoints
        from recemb.train.runner import WorkerContext
        from recemb.train.two_tower import fit_two_tower

        ctx = WorkerContext(
            checkpoints=LocalCheckpoints(Path(checkpoint_dir)) if checkpoint_dir else None,
            on_epoch=epoch_observer(on_epoch, lambda state: TwoTower.from_trained(self.config, *state)),
        )
        fitted = fit_two_tower(
            self.config, events, items, users, catalogue, validation, root=root, cache_dir=cache_dir, ctx=ctx
        )
        return self._set_trained(fitted.space, fitted.net, fitted.history)

    def prepare_side(
        self,
        items: pl.DataFrame | None = None,
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        """Cache the frozen content features (MiniLM sentences, backbone image features) of every item."""
        parts = self.config.content
        if items is None or items.height == 0 or cache_dir is None or not (parts.pretrained_text or parts.image):
            return
        from recemb.models.two_tower.content import item_content_features

        item_content_features(Vocab.from_ids(items["item_id"]), items, parts, root, cache_dir)

    @classmethod
    def from_trained(cls, config: TwoTowerConfig, space: FeatureSpace, net: TwoTowerNet, history: list) -> TwoTower:
        """A fitted model around trained towers (a training loop's per-epoch snapshot)."""
        return cls(config)._set_trained(space, net, history)

    def _set_trained(self, space: FeatureSpace, net: TwoTowerNet | None, history: list) -> TwoTower:
        self.space, self.net, self.history = space, net, list(history)
        self.collate = Collator(space)
        return self

    @property
    def is_fitted(self) -> bool:
        return self.net is not None or self._loaded is not None

    def _features(self) -> tuple[FeatureSpace, Collator]:
        """The feature space and collator of a fitted or loaded model; :class:`NotFittedError` otherwise."""
        if self.space is None or self.collate is None:
            raise self.not_fitted_error()
        return self.space, self.collate

    def _trained_net(self) -> TwoTowerNet:
        """Both towers of a model fitted here (a loaded one keeps its user tower only)."""
        if self.net is None:
            raise self.not_fitted_error()
        return self.net

    # ---------------------------------------------------------------- export
    def item_embeddings(self, drop: tuple[str, ...] = ()) -> EmbeddingSet:
        """Every catalogue item's ``[N, D]`` unit-norm vector (metric cosine).

        Items that were never a training target get theirs from their other
        parts (content, categories); ``drop=("item_id",)`` does that for all.
        """
        self.require_fitted()
        if self._loaded is not None:
            if drop:
                raise RecembError("TwoTower.item_embeddings(drop=...): a loaded model holds final vectors only")
            return self._loaded[0]
        return item_embedding_set(self._trained_net(), self._features()[0], self.history, drop)

    def encode_histories(
        self,
        items: np.ndarray,
        offsets: np.ndarray,
        user_ids: np.ndarray | None = None,
        **pooling: Any,
    ) -> np.ndarray:
        """``[B, D]`` user-tower vectors from CSR histories of item rows (``offsets`` ``[B + 1]``).

        Rows of -1 (items without a vector) are skipped; ``user_ids`` feed the
        user features; the pooling keywords of the contract do not apply.
        """
        space, collate = self._features()
        items = np.asarray(items, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(items) and items.min() < 0:
            owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
            keep = items >= 0
            lengths = np.bincount(owner[keep], minlength=len(offsets) - 1)
            items, offsets = items[keep], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = space.user_rows(user_ids, len(offsets) - 1)
        return encode_users(self._user_tower(), collate, items, offsets[:-1], np.diff(offsets), rows)

    def user_embeddings(self, events: pl.DataFrame) -> EmbeddingSet:
        """One ``[U, D]`` vector per user of ``events``, from their latest ``history_length`` items."""
        self.require_fitted()
        if self.net is None:
            raise RecembError("TwoTower.user_embeddings: a loaded model answers queries only; use encode()")
        return user_embedding_set(self.net, self._features()[0], events)

    def _user_tower(self) -> UserTower:
        return self._loaded[1] if self._loaded is not None else self._trained_net().user_tower

    def save_user_tower(self, out_dir: str | os.PathLike) -> Path:
        """Write ``state_dict.pt`` (plain tensors), ``config.json`` and the vocabularies, atomically."""
        self.require_fitted()
        return save_user_tower(self._user_tower(), self._features()[0], out_dir)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings/`` (every catalogue item), ``user_tower/`` and ``model.json``, atomically."""
        self.require_fitted()
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.item_embeddings().save(tmp / "embeddings")
            save_user_tower(self._user_tower(), self._features()[0], tmp / "user_tower")
            write_json(tmp / "model.json", self.model_meta(history=self.history))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TwoTower:
        """A TwoTower from :meth:`save`'s directory: item vectors and user tower (plain torch)."""
        meta = cls.read_meta(directory)
        tower = load_user_tower(Path(directory) / "user_tower")
        items = EmbeddingSet.load(Path(directory) / "embeddings")
        model = cls(tower.config)
        model.space, model.collate, model.history = tower.space, tower.collate, list(meta.get("history") or [])
        model._loaded = (items, tower.tower)
        return model


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
