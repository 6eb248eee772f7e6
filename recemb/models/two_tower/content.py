"""Content in the item tower: per-item content inputs and the fusion of all item parts.

With ``two_tower.content`` on, the item tower has up to five parts, each
``[B, E]`` (E = ``two_tower.embedding_dim``):

==================  ==========================================================
part                where it comes from
==================  ==========================================================
``item_id``         the id table (sparse, the tower's EmbeddingBagCollection)
``category``        mean of the item's category rows (sparse, same collection)
``text``            mean of the hashed word / n-gram rows (sparse, same collection)
``image``           :class:`~recemb.models.content.image.ImageHead` over a
                    trainable CNN's or a frozen, cached backbone's features
``pretrained_text`` a linear map of frozen sentence embeddings
==================  ==========================================================

:class:`ItemContent` fuses them with
:class:`~recemb.models.content.fusion.ContentFusion` (gated sum or concat +
MLP) under modality dropout (DropoutNet): in training, each present part is
hidden with probability ``modality_dropout``, so the tower learns to place an
item from any subset of its parts. A part is *absent* for an item that lacks
it: no text, no usable image, no categories, and, for ``item_id``, no
training example with the item as its target (its id row was never trained).
So an item that never appeared in training gets its vector from content
alone, in the same space as the warm items.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import numpy as np
import polars as pl
import torch
from torch import nn

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.models.content import image as img
from recemb.models.content.config import ItemContentConfig
from recemb.models.content.encoder import ContentFeatures, build_features, image_weights
from recemb.models.content.fusion import ContentFusion
from recemb.models.content.text import bag_lengths


def item_content_features(
    items: Vocab,
    items_table: pl.DataFrame | None,
    cfg: ItemContentConfig,
    root: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
) -> ContentFeatures:
    """:class:`ContentFeatures` with row i = ``items.ids[i]`` (items missing from the table have no content)."""
    if items_table is None or items_table.height == 0:
        raise DataValidationError(
            "two_tower.content: the dataset has no items table, so there is no content to read; "
            "turn two_tower.content.text/image/pretrained_text off or prepare a source with items"
        )
    rows = pl.DataFrame({"item_id": pl.Series(items.ids.tolist(), dtype=pl.String)}).join(
        items_table.unique("item_id", keep="first", maintain_order=True),
        on="item_id",
        how="left",
        maintain_order="left",
    )
    return build_features(rows, root, cfg, cache_dir)


class ItemContent(nn.Module):
    """Fuses the item tower's parts for a batch of item indices (module doc).

    Args:
        feats: content inputs of the N catalogue items (:func:`item_content_features`).
        cfg: the ``two_tower.content`` section.
        sparse_parts: ``{name: [N] bool presence}`` of the tower's pooled
            sparse features, in the tower's key order (``item_id``, ...).
        dim: E, the width of every part and of the fused output.

    Buffers: ``id_trained [N]`` (persistent: which id rows were trained) and
    the per-item presence masks and dense inputs (not persistent: they are
    rebuilt from the items table, so checkpoints stay small).
    """

    id_trained: torch.Tensor  # [N] bool
    presence: torch.Tensor  # [N, len(static_names)] bool
    images: torch.Tensor  # [N, 3, S, S] uint8 (trainable backbone)
    image_feats: torch.Tensor  # [N, F] float32 (frozen features)
    sentence: torch.Tensor  # [N, P] float32

    def __init__(
        self,
        feats: ContentFeatures,
        cfg: ItemContentConfig,
        sparse_parts: dict[str, np.ndarray],
        dim: int,
        device: torch.device | None = None,
    ):
        super().__init__()
        n = len(feats)
        self.sparse_names = list(sparse_parts)
        self.register_buffer("id_trained", torch.as_tensor(sparse_parts["item_id"], dtype=torch.bool))
        static = {k: v for k, v in sparse_parts.items() if k != "item_id"}
        dims = {k: dim for k in self.sparse_names}
        self.backbone: img.Backbone | None = None
        if feats.image_ok is not None:
            static["image"] = feats.image_ok
            if feats.images is not None:
                self.backbone = img.make_backbone(cfg.image_backbone, image_weights(cfg), cfg.image_width)
                self.register_buffer("images", torch.from_numpy(feats.images), persistent=False)
                in_dim = self.backbone.out_dim
            elif feats.image_feats is not None:
                self.register_buffer("image_feats", torch.from_numpy(feats.image_feats), persistent=False)
                in_dim = feats.image_feats.shape[1]
            else:
                raise DataValidationError("ItemContent: image_ok is set but neither images nor image_feats are")
            self.image = img.ImageHead(in_dim, dim)
            dims["image"] = dim
        if feats.sentence is not None:
            static["pretrained_text"] = np.ones(n, dtype=bool)
            self.register_buffer("sentence", torch.from_numpy(feats.sentence), persistent=False)
            self.sentence_proj = nn.Linear(feats.sentence.shape[1], dim)
            dims["pretrained_text"] = dim
        self.static_names = list(static)
        self.register_buffer(
            "presence",
            torch.from_numpy(
                np.stack([np.asarray(static[k], dtype=bool) for k in static], axis=1)
                if static
                else np.zeros((n, 0), dtype=bool)
            ),
            persistent=False,
        )
        self.fusion = ContentFusion(dims, dim, cfg.fusion, cfg.modality_dropout, cfg.hidden)
        self.out_dim = dim
        if device is not None:
            self.to(device)

    def forward(
        self, pooled: dict[str, torch.Tensor], item_idx: torch.Tensor, drop: Collection[str] = ()
    ) -> torch.Tensor:
        """``pooled[k] [B, E]`` of the sparse parts, ``item_idx [B]`` -> fused ``[B, E]``.

        ``drop`` hides parts for every row (e.g. ``("item_id",)``: the
        content-only vector of warm items as well).
        """
        present = {"item_id": self.id_trained[item_idx]}
        rows = self.presence[item_idx]
        present.update({k: rows[:, i] for i, k in enumerate(self.static_names)})
        parts = {k: pooled[k] for k in self.sparse_names}
        if "image" in present:
            if self.backbone is not None:
                # A batch repeats popular items: run the CNN once per distinct item.
                uniq, inverse = torch.unique(item_idx, return_inverse=True)
                x = img.normalize(self.images[uniq], getattr(self.backbone, "imagenet_normalized", False))
                f = self.backbone(x)[inverse]
            else:
                f = self.image_feats[item_idx]
            parts["image"] = self.image(f, present["image"])
        if "pretrained_text" in present:
            parts["pretrained_text"] = self.sentence_proj(self.sentence[item_idx])
        for k in drop:
            if k in present:
                present[k] = torch.zeros_like(present[k])
        return self.fusion(parts, present)


def sparse_presence(space, id_trained: np.ndarray | None) -> dict[str, np.ndarray]:
    """``{part: [N] bool}`` for the tower's sparse item features of a ``FeatureSpace``."""
    n = len(space.items)
    out = {"item_id": np.ones(n, dtype=bool) if id_trained is None else np.asarray(id_trained, dtype=bool)}
    if "category" in space.item_keys():
        out["category"] = np.diff(space.item_cat_offsets) > 0
    if "text" in space.item_keys():
        out["text"] = np.asarray(bag_lengths(space.content.text_offsets) > 0)
    return out
