"""Canonical tables -> two-tower training examples and sparse feature batches.

This is the one place where sparse features are laid out, and the only
place a ``KeyedJaggedTensor`` is built (:meth:`JaggedFeatures.to_kjt`).

- :class:`FeatureSpace` holds the vocabularies (items, categories, user
  categoricals, all :class:`~recemb.data.vocab.Vocab`) and the per-item and
  per-user feature rows as index arrays.
- :func:`build_examples` turns events into training examples: every
  interaction of a user (ordered by (ts, item_id), as P-ML) is a target, the
  ``history_length`` items before it are the history.
- :class:`Collator` builds :class:`JaggedFeatures` for user and item batches.

Feature names (``F`` keys of a jagged batch)::

    user: "history", "recent" (if recent_length > 0), "u_<column>" per user feature
    item: "item_id", "category" (if item_categories), "text" (if content.text:
          hashed word and character n-gram buckets of the item's text fields)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recemb.data.splits import sort_keys
from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.models.content.text import slice_bags
from recemb.models.two_tower.config import TwoTowerConfig


@dataclass(frozen=True)
class JaggedFeatures:
    """A batch of B examples with F jagged integer features, in KJT layout.

    ``lengths`` is key-major: the B lengths of ``keys[0]``, then those of
    ``keys[1]``, ...; ``values`` concatenates the ids in the same order.

    Attributes:
        keys: the F feature names.
        values: ``[sum(lengths)]`` int64 table rows.
        lengths: ``[F * B]`` int32.
        batch_size: B.
    """

    keys: tuple[str, ...]
    values: torch.Tensor
    lengths: torch.Tensor
    batch_size: int

    def to(self, device: torch.device | str) -> JaggedFeatures:
        return JaggedFeatures(self.keys, self.values.to(device), self.lengths.to(device), self.batch_size)

    def feature(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [n], offsets [B + 1])`` of one feature, for ``nn.EmbeddingBag``."""
        f, b = self.keys.index(key), self.batch_size
        per_key = self.lengths.view(len(self.keys), b).sum(dim=1)
        start = int(per_key[:f].sum())
        stop = start + int(per_key[f])
        offsets = torch.zeros(b + 1, dtype=torch.int64, device=self.lengths.device)
        torch.cumsum(self.lengths[f * b : (f + 1) * b], dim=0, out=offsets[1:])
        return self.values[start:stop], offsets

    def to_kjt(self):
        """The torchrec ``KeyedJaggedTensor`` of this batch (imports torchrec)."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        return KeyedJaggedTensor.from_lengths_sync(keys=list(self.keys), values=self.values, lengths=self.lengths)


def _jagged(keys: list[str], parts: list[tuple[np.ndarray, np.ndarray]], b: int) -> JaggedFeatures:
    """Stack per-key ``(values, lengths [B])`` into one :class:`JaggedFeatures`."""
    values = np.concatenate([v for v, _ in parts]) if parts else np.zeros(0, np.int64)
    lengths = np.concatenate([ln for _, ln in parts]) if parts else np.zeros(0, np.int32)
    return JaggedFeatures(
        tuple(keys),
        torch.from_numpy(values.astype(np.int64, copy=False)),
        torch.from_numpy(lengths.astype(np.int32, copy=False)),
        b,
    )


def gather_windows(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate the windows ``values[starts[i] : starts[i] + lengths[i]]``."""
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    pos = np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)
    return values[pos]


def _hash_rows(idx: np.ndarray, size: int) -> np.ndarray:
    """Vocab indices -> table rows; beyond a fixed table size they share rows modulo ``size``."""
    return idx if size <= 0 else idx % size


class FeatureSpace:
    """Vocabularies and per-entity feature rows of one two-tower model.

    Attributes:
        items: item Vocab; its index is the item-id table row (and the
            catalogue index of exported embeddings).
        categories: Vocab of item categories (empty when unused).
        item_cat_offsets / item_cat_values: CSR ``[N + 1]`` / ``[nnz]`` of
            category rows per item.
        user_columns: the user categorical features, in order.
        user_vocabs: one Vocab per user column.
        users: Vocab of user ids that have a users-table row.
        user_cats: ``[U, F_u]`` int64 rows per user and column, ``-1`` = missing.
        content: per-item content inputs (ContentFeatures, rows = item
            indices) when ``config.content`` is on, else None.

    Args:
        content_root: the directory ``items.image_path`` is relative to.
        cache_dir: where frozen image / sentence features are cached.
    """

    def __init__(
        self,
        items: Vocab,
        config: TwoTowerConfig,
        items_table: pl.DataFrame | None = None,
        users_table: pl.DataFrame | None = None,
        content_root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.config = config
        self.items = items
        n = len(items)
        self.content = None
        if config.content.enabled:
            from recemb.models.two_tower.content import item_content_features

            self.content = item_content_features(items, items_table, config.content, content_root, cache_dir)
        self.categories = Vocab([])
        self.item_cat_offsets = np.zeros(n + 1, dtype=np.int64)
        self.item_cat_values = np.zeros(0, dtype=np.int64)
        if config.item_categories and items_table is not None and "category" in items_table.columns:
            cats = items_table.select("item_id", "category").explode("category").drop_nulls("category")
            self.categories = Vocab.from_ids(cats["category"])
            rows = items.lookup(cats["item_id"])
            keep = rows >= 0
            rows, vals = rows[keep], self.categories.lookup(cats["category"])[keep]
            order = np.argsort(rows, kind="stable")
            self.item_cat_values = vals[order]
            np.cumsum(np.bincount(rows, minlength=n), out=self.item_cat_offsets[1:])

        self.user_columns = list(config.user_features)
        self.user_vocabs: list[Vocab] = []
        self.users = Vocab([])
        self.user_cats = np.zeros((0, len(self.user_columns)), dtype=np.int64)
        if self.user_columns:
            if users_table is None:
                raise DataValidationError(
                    f"two_tower.user_features = {self.user_columns} but the dataset has no users table; "
                    "set two_tower.user_features: [] or prepare a source with users"
                )
            missing = [c for c in self.user_columns if c not in users_table.columns]
            if missing:
                raise DataValidationError(
                    f"two_tower.user_features: users table lacks column(s) {missing}; it has {users_table.columns}"
                )
            ut = users_table.unique("user_id", keep="first", maintain_order=True)
            self.users = Vocab(ut["user_id"].cast(pl.String).to_numpy().astype(object))
            cols = []
            for c in self.user_columns:
                s = ut[c].cast(pl.String)
                vocab = Vocab.from_ids(s.drop_nulls())
                self.user_vocabs.append(vocab)
                cols.append(vocab.lookup(s))
            self.user_cats = np.stack(cols, axis=1)

    # --------------------------------------------------------------- tables
    def table_sizes(self) -> dict[str, int]:
        """Rows of each sparse table: ``{"items", "categories", "u_<column>"...}``."""
        c = self.config
        out = {"items": c.item_table_size or max(len(self.items), 1)}
        if self.config.item_categories:
            out["categories"] = c.category_table_size or max(len(self.categories), 1)
        if c.content.text:
            out["text"] = c.content.buckets
        for col, vocab in zip(self.user_columns, self.user_vocabs):
            out[f"u_{col}"] = c.user_table_size or max(len(vocab), 1)
        return out

    def user_keys(self) -> list[str]:
        keys = ["history"] + (["recent"] if self.config.recent_length > 0 else [])
        return keys + [f"u_{c}" for c in self.user_columns]

    def item_keys(self) -> list[str]:
        c = self.config
        return ["item_id"] + (["category"] if c.item_categories else []) + (["text"] if c.content.text else [])

    def user_rows(self, user_ids: np.ndarray | pl.Series | None, b: int) -> np.ndarray:
        """``[B]`` row of each user in ``user_cats`` (``-1`` = unknown or no features)."""
        if not self.user_columns or user_ids is None:
            return np.full(b, -1, dtype=np.int64)
        return self.users.lookup(pl.Series("id", list(user_ids), dtype=pl.String))


def item_vocab(events: pl.DataFrame, items_table: pl.DataFrame | None = None) -> Vocab:
    """Items by event count (Vocab order), then catalogue items without events (so every item gets a vector)."""
    vocab = Vocab.from_ids(events["item_id"])
    if items_table is None or items_table.height == 0:
        return vocab
    extra = items_table["item_id"].cast(pl.String).unique(maintain_order=True)
    extra = extra.filter(~extra.is_in(pl.Series(vocab.ids.tolist(), dtype=pl.String).implode())).sort()
    if extra.len() == 0:
        return vocab
    ids = np.concatenate([vocab.ids, extra.to_numpy().astype(object)])
    return Vocab(ids, np.concatenate([vocab.counts, np.zeros(extra.len(), dtype=np.int64)]))


@dataclass(frozen=True)
class Examples:
    """Training examples as windows into per-user item sequences.

    Attributes:
        seq: ``[T]`` int64 item indices of all users, user-major, oldest first.
        hist_start / hist_len: ``[E]`` window of each example's history in ``seq``.
        target: ``[E]`` int64 item index of each example.
        user_row: ``[E]`` int64 row in ``FeatureSpace.user_cats`` (-1 = none).
    """

    seq: np.ndarray
    hist_start: np.ndarray
    hist_len: np.ndarray
    target: np.ndarray
    user_row: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


def user_sequences(events: pl.DataFrame, space: FeatureSpace) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """Each user's items oldest first (P-ML order: ts, then item id).

    Returns ``(seq [T], offsets [U + 1], user_ids [U])``; items not in
    ``space.items`` are dropped.
    """
    missing = [c for c in ("user_id", "item_id", "ts") if c not in events.columns]
    if missing:
        raise DataValidationError(f"two-tower features: events lack column(s) {missing}; pass canonical events")
    ev = events.select("user_id", "item_id", "ts")
    ev = ev.sort([pl.col("user_id"), *sort_keys(ev, ("ts", "item_id"))], maintain_order=True)
    idx = space.items.lookup(ev["item_id"])
    keep = idx >= 0
    ev, idx = ev.filter(pl.Series(keep)), idx[keep]
    spans = ev.with_row_index("_r").group_by("user_id", maintain_order=True).agg(n=pl.len())
    offsets = np.zeros(spans.height + 1, dtype=np.int64)
    np.cumsum(spans["n"].to_numpy(), out=offsets[1:])
    return idx, offsets, spans["user_id"]


def build_examples(events: pl.DataFrame, space: FeatureSpace) -> Examples:
    """Every interaction with at least ``min_history`` earlier ones, as (history, target)."""
    c = space.config
    seq, offsets, users = user_sequences(events, space)
    lengths = np.diff(offsets)
    user_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(seq)) - offsets[user_of]  # position inside the user's sequence
    ex = np.flatnonzero(pos >= c.min_history)
    hist_len = np.minimum(pos[ex], c.history_length)
    rows = space.user_rows(users, len(users))
    return Examples(
        seq=seq,
        hist_start=ex - hist_len,
        hist_len=hist_len.astype(np.int64),
        target=seq[ex],
        user_row=rows[user_of[ex]],
    )


class Collator:
    """Builds :class:`JaggedFeatures` for user and item batches of one :class:`FeatureSpace`.

    User batch of B = 3 histories (history_length 3, recent_length 1, no user
    features), histories ``[7, 2, 5]``, ``[]`` and ``[4]``::

        key       b=0         b=1   b=2
        history   [7, 2, 5]   []    [4]
        recent    [5]         []    [4]

    gives ``keys = ("history", "recent")``,
    ``lengths = [3, 0, 1, 1, 0, 1]``, ``values = [7, 2, 5, 4, 5, 4]``.
    """

    def __init__(self, space: FeatureSpace):
        self.space = space
        self.config = space.config
        sizes = space.table_sizes()
        self._item_rows = sizes["items"] if space.config.item_table_size else 0
        self._cat_rows = sizes.get("categories", 0) if space.config.category_table_size else 0
        self._user_rows = space.config.user_table_size

    def users(
        self, seq: np.ndarray, starts: np.ndarray, lengths: np.ndarray, user_rows: np.ndarray | None = None
    ) -> JaggedFeatures:
        """User-tower batch from history windows ``seq[starts[b] : starts[b] + lengths[b]]``.

        Windows longer than ``history_length`` keep their most recent items.
        ``user_rows`` ``[B]`` indexes ``FeatureSpace.user_cats`` (-1 = none).
        """
        c = self.config
        b = len(starts)
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        h = np.minimum(lengths, c.history_length)
        hs = starts + lengths - h
        parts = [(_hash_rows(gather_windows(seq, hs, h), self._item_rows), h)]
        if c.recent_length > 0:
            r = np.minimum(lengths, c.recent_length)
            parts.append((_hash_rows(gather_windows(seq, starts + lengths - r, r), self._item_rows), r))
        if self.space.user_columns:
            rows = np.full(b, -1, np.int64) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
            cats = (
                np.where(rows[:, None] >= 0, self.space.user_cats[np.maximum(rows, 0)], -1)
                if len(self.space.user_cats)
                else np.full((b, len(self.space.user_columns)), -1, np.int64)
            )
            for f in range(cats.shape[1]):
                present = cats[:, f] >= 0
                parts.append((_hash_rows(cats[present, f], self._user_rows), present.astype(np.int64)))
        return _jagged(self.space.user_keys(), parts, b)

    def items(self, item_idx: np.ndarray) -> JaggedFeatures:
        """Item-tower batch for ``[B]`` item indices."""
        item_idx = np.asarray(item_idx, dtype=np.int64)
        b = len(item_idx)
        parts = [(_hash_rows(item_idx, self._item_rows), np.ones(b, dtype=np.int64))]
        sp = self.space
        if self.config.item_categories:
            values, offsets = slice_bags(sp.item_cat_values, sp.item_cat_offsets, item_idx)
            parts.append((_hash_rows(values, self._cat_rows), np.diff(offsets)))
        if self.config.content.text:
            content = sp.content
            if content is None or content.text_ids is None or content.text_offsets is None:
                raise DataValidationError(
                    "Collator.items: two_tower.content.text is on but the items have no text features"
                )
            values, offsets = slice_bags(content.text_ids, content.text_offsets, item_idx)
            parts.append((values, np.diff(offsets)))  # already bucket ids
        return _jagged(self.space.item_keys(), parts, b)

    def examples(self, ex: Examples, rows: np.ndarray) -> tuple[JaggedFeatures, np.ndarray]:
        """User features of examples ``rows`` and their ``[B]`` target item indices."""
        feats = self.users(ex.seq, ex.hist_start[rows], ex.hist_len[rows], ex.user_row[rows])
        return feats, ex.target[rows]
