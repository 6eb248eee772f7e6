"""Per-item content features and the content encoder that fuses them.

:func:`build_features` turns an ``items`` table into :class:`ContentFeatures`
(numpy, one row per item: CSR hashed text and category tokens, decoded
images or cached frozen image features, optional sentence embeddings), and
:class:`ContentEncoder` maps a batch of rows to unit ``[B, D]`` vectors:
each enabled part -> ``[B, d]``, fused by :class:`ContentFusion`. The
two-tower item tower reuses :func:`build_features` and ``ContentFusion`` for
its own content parts (:mod:`recemb.models.two_tower.content`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn import functional as F

from recemb.errors import ConfigError, DataValidationError
from recemb.models.content import image as img
from recemb.models.content.config import ContentConfig, ContentParts
from recemb.models.content.fusion import ContentFusion
from recemb.models.content.text import HashedTokenizer, TextEncoder, bag_lengths, slice_bags

log = logging.getLogger(__name__)

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def image_weights(cfg: ContentParts) -> Path:
    """The MobileNetV2 state dict of ``cfg``: ``image_weights``, else ``<data>/weights/mobilenet_v2-b0353104.pth``."""
    if cfg.image_weights:
        return Path(cfg.image_weights)
    from recemb.data.paths import data_dir

    return data_dir() / "weights" / MOBILENET_FILE


@dataclass
class ContentFeatures:
    """Content inputs of N items, row i = ``item_ids[i]``.

    Attributes:
        item_ids: ``[N]`` object array of item ids.
        text_ids, text_offsets: CSR hashed text tokens (``[T]``, ``[N + 1]``), or None.
        cat_ids, cat_offsets: CSR hashed category names, or None.
        images: ``[N, 3, S, S]`` uint8 (trainable backbone), or None.
        image_feats: ``[N, F]`` float32 frozen-backbone features, or None.
        image_ok: ``[N]`` bool, the item has a usable image (None without images).
        sentence: ``[N, P]`` float32 pretrained sentence embeddings, or None.
    """

    item_ids: np.ndarray
    text_ids: np.ndarray | None = None
    text_offsets: np.ndarray | None = None
    cat_ids: np.ndarray | None = None
    cat_offsets: np.ndarray | None = None
    images: np.ndarray | None = None
    image_feats: np.ndarray | None = None
    image_ok: np.ndarray | None = None
    sentence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def coverage(self) -> dict[str, float]:
        """Share of items that have each part (for the metrics record)."""
        out = {}
        if self.text_offsets is not None:
            out["text"] = float((bag_lengths(self.text_offsets) > 0).mean())
        if self.cat_offsets is not None:
            out["category"] = float((bag_lengths(self.cat_offsets) > 0).mean())
        if self.image_ok is not None:
            out["image"] = float(self.image_ok.mean())
        if self.sentence is not None:
            out["pretrained_text"] = 1.0
        return out

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Tensors of items ``rows`` ``[B]`` for :meth:`ContentEncoder.forward`."""
        out: dict[str, torch.Tensor] = {}

        def t(x):
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        if self.text_ids is not None and self.text_offsets is not None:
            ids, off = slice_bags(self.text_ids, self.text_offsets, rows)
            out["text_ids"], out["text_offsets"] = t(ids), t(off)
        if self.cat_ids is not None and self.cat_offsets is not None:
            ids, off = slice_bags(self.cat_ids, self.cat_offsets, rows)
            out["cat_ids"], out["cat_offsets"] = t(ids), t(off)
        if self.images is not None:
            out["images"] = t(self.images[rows])
        if self.image_feats is not None:
            out["image_feats"] = t(self.image_feats[rows])
        if self.image_ok is not None:
            out["image_ok"] = t(self.image_ok[rows])
        if self.sentence is not None:
            out["sentence"] = t(self.sentence[rows])
        return out


def _texts(items: pl.DataFrame, fields: list[str]) -> list[str]:
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise DataValidationError(
            f"items table has no column(s) {missing} for content.text_fields; "
            f"available: {items.columns} (set content.text_fields)"
        )
    joined = items.select(pl.concat_str([pl.col(f).cast(pl.String).fill_null("") for f in fields], separator=" "))
    return joined.to_series().to_list()


def build_features(
    items: pl.DataFrame,
    root: str | os.PathLike | None,
    cfg: ContentParts,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> ContentFeatures:
    """Features of every row of a canonical ``items`` table (``root``: where ``image_path`` is relative to).

    ``cfg`` is a :class:`ContentConfig` or the two-tower's ``ItemContentConfig``
    (which has no ``category`` part: the tower keeps its own category table).
    """
    if items.height == 0:
        raise DataValidationError("build_features: the items table is empty; content needs one row per item")
    feats = ContentFeatures(item_ids=np.asarray(items["item_id"].to_list(), dtype=object))
    if cfg.text:
        tok = HashedTokenizer(cfg.buckets, cfg.min_n, cfg.max_n, cfg.cjk_bigrams)
        feats.text_ids, feats.text_offsets = tok.encode(_texts(items, cfg.text_fields))
    if isinstance(cfg, ContentConfig) and cfg.category:  # ItemContentConfig has no category part
        cats = items["category"].to_list() if "category" in items.columns else [[]] * items.height
        tok = HashedTokenizer(cfg.category_buckets, max_n=0)
        # A category name is one token ("c:Sci-Fi"); hashing keeps the table size fixed.
        feats.cat_ids, feats.cat_offsets = _encode_categories(cats, tok.buckets)
    if cfg.image:
        paths = items["image_path"].to_list() if "image_path" in items.columns else [None] * items.height
        if cfg.image_backbone == "mobilenet_v2" and not cfg.image_finetune:
            weights = image_weights(cfg)
            backbone = img.load_mobilenet_v2(weights, device)
            if cache_dir is None:
                raise DataValidationError("frozen image features need a cache_dir (content.cache_dir)")
            tag = f"mobilenet_v2-{weights.stem.rsplit('-', 1)[-1]}"
            feats.image_feats, feats.image_ok = img.cached_features(
                backbone, tag, feats.item_ids.tolist(), paths, root, cfg.image_size, cache_dir, device, cfg.num_workers
            )
        else:
            feats.images, feats.image_ok = img.load_images(paths, root, cfg.image_size, cfg.num_workers)
    if cfg.pretrained_text:
        from recemb.models.content.pretrained_text import sentence_embeddings

        feats.sentence = sentence_embeddings(_texts(items, cfg.text_fields), feats.item_ids.tolist(), cache_dir)
    return feats


def _encode_categories(cats: list, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    from recemb.models.content.text import hash_token

    ids, offsets = [], [0]
    for row in cats:
        for c in row or []:
            ids.append(hash_token("c:" + str(c).lower(), buckets))
        offsets.append(len(ids))
    return np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class ContentEncoder(nn.Module):
    """Content parts of a batch -> unit-norm ``[B, out_dim]`` vectors.

    Parts (each on when its features exist): ``text`` (:class:`TextEncoder`),
    ``category`` (mean of hashed category vectors), ``image`` (trainable
    backbone or frozen features, then :class:`ImageHead`), ``pretrained_text``
    (a linear map of frozen sentence embeddings). Fused by :class:`ContentFusion`.
    """

    def __init__(self, cfg: ContentConfig, feats: ContentFeatures, out_dim: int, device: torch.device | str = "cpu"):
        super().__init__()
        device = torch.device(device)
        _check_buckets(feats.text_ids, cfg.buckets, "text", "content.buckets")
        _check_buckets(feats.cat_ids, cfg.category_buckets, "category", "content.category_buckets")
        d = cfg.text_dim
        parts: dict[str, int] = {}
        if feats.text_ids is not None:
            self.text = TextEncoder(cfg.buckets, d, backend=cfg.text_backend, device=device)
            parts["text"] = self.text.out_dim
        if feats.cat_ids is not None:
            self.category = nn.EmbeddingBag(cfg.category_buckets, d, mode="mean", sparse=True)
            nn.init.normal_(self.category.weight, std=0.1)
            parts["category"] = d
        if feats.image_ok is not None:
            if feats.images is not None:
                weights = image_weights(cfg)
                self.backbone: img.Backbone | None = img.make_backbone(cfg.image_backbone, weights, cfg.image_width)
                in_dim = self.backbone.out_dim
            elif feats.image_feats is not None:
                self.backbone = None
                in_dim = feats.image_feats.shape[1]
            else:
                raise DataValidationError("ContentEncoder: image_ok is set but neither images nor image_feats are")
            self.image = img.ImageHead(in_dim, d)
            parts["image"] = d
        if feats.sentence is not None:
            self.sentence = nn.Linear(feats.sentence.shape[1], d)
            parts["pretrained_text"] = d
        self.fusion = ContentFusion(parts, out_dim, cfg.fusion, cfg.modality_dropout, cfg.hidden)
        self.to(device)

    def parts(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-part ``[B, d]`` vectors and ``[B]`` presence masks."""
        feats: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        if "text_ids" in batch:
            feats["text"] = self.text(batch["text_ids"], batch["text_offsets"])
            present["text"] = bag_lengths(batch["text_offsets"]) > 0
        if "cat_ids" in batch:
            feats["category"] = self.category(batch["cat_ids"], batch["cat_offsets"][:-1])
            present["category"] = bag_lengths(batch["cat_offsets"]) > 0
        if "image_ok" in batch:
            if self.backbone is not None:
                x = img.normalize(batch["images"], getattr(self.backbone, "imagenet_normalized", False))
                f = self.backbone(x)
            else:
                f = batch["image_feats"]
            feats["image"] = self.image(f, batch["image_ok"])
            present["image"] = batch["image_ok"]
        if "sentence" in batch:
            feats["pretrained_text"] = self.sentence(batch["sentence"])
            present["pretrained_text"] = torch.ones(len(batch["sentence"]), dtype=torch.bool, device=f_device(batch))
        return feats, present

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch`` from :meth:`ContentFeatures.batch` -> ``[B, out_dim]`` unit vectors."""
        feats, present = self.parts(batch)
        return F.normalize(self.fusion(feats, present), dim=1)


def _check_buckets(ids: np.ndarray | None, buckets: int, part: str, key: str) -> None:
    """Hashed ids must index the encoder's table: features and encoder built with other sizes do not."""
    if ids is not None and ids.size and int(ids.max()) >= buckets:
        raise ConfigError(
            f"ContentEncoder: the {part} features hold bucket {int(ids.max())}, but the table has {buckets} "
            f"rows; build the features and the encoder with the same {key}"
        )


def f_device(batch: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(batch.values())).device


@torch.no_grad()
def encode_all(encoder: ContentEncoder, feats: ContentFeatures, batch_size: int = 1024) -> np.ndarray:
    """``[N, D]`` float32 unit vectors of every item (eval mode: no modality dropout)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for lo in range(0, len(feats), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(feats)))
        out.append(encoder(feats.batch(rows, device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
