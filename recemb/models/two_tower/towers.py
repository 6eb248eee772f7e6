"""User and item towers: sparse features -> L2-normalised ``[B, D]`` embeddings.

Each tower owns one sparse module (a set of mean-pooled tables) and an MLP.
The sparse module has two interchangeable backends with the same
parameter names (``ebc.embedding_bags.<table>.weight``), so a state dict
moves between them unchanged:

- :class:`TorchrecSparse`: a torchrec ``EmbeddingBagCollection`` fed a
  ``KeyedJaggedTensor``; sharded and given fused optimizers by
  ``DistributedModelParallel`` (recemb.models.two_tower.distributed).
- :class:`PlainSparse`: one ``nn.EmbeddingBag`` per table; plain torch on
  any device (CUDA machines without torchrec, the exported user tower, and
  the unfused baseline of benchmarks/two_tower.py).

Content parts of the item tower are fused in recemb.models.two_tower.content.
Towers know nothing of the loss (recemb.models.two_tower.task).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recemb.models.layers import mlp as mlp_layers
from recemb.models.two_tower.content import ItemContent, sparse_presence
from recemb.models.two_tower.features import JaggedFeatures


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: ``rows`` x ``dim``, mean-pooled for each of ``features``."""

    name: str
    rows: int
    dim: int
    features: tuple[str, ...]


def tower_tables(
    sizes: dict[str, int], user_keys: list[str], item_keys: list[str], dim: int
) -> tuple[list[TableSpec], list[TableSpec]]:
    """Table specs of the user and item towers from ``FeatureSpace.table_sizes()``.

    The user tower's "history" and "recent" features share one table (the
    same item pooled over two windows); the item tower has its own item
    table, so the towers stay separate modules.
    """
    user = [TableSpec("user_items", sizes["items"], dim, tuple(k for k in user_keys if k in ("history", "recent")))]
    user += [TableSpec(k, sizes[k], dim, (k,)) for k in user_keys if k.startswith("u_")]
    item = [TableSpec("item_ids", sizes["items"], dim, ("item_id",))]
    if "category" in item_keys:
        item.append(TableSpec("categories", sizes["categories"], dim, ("category",)))
    if "text" in item_keys:
        item.append(TableSpec("text_tokens", sizes["text"], dim, ("text",)))
    return user, item


class _Bags(nn.Module):
    """Holds ``embedding_bags`` so plain and torchrec parameter names agree."""

    def __init__(self, tables: list[TableSpec], device: torch.device | None):
        super().__init__()
        bags = {t.name: nn.EmbeddingBag(t.rows, t.dim, mode="mean", device=device) for t in tables}
        for t in tables:
            # torchrec's default initialiser, so both backends start alike.
            bound = (1.0 / t.rows) ** 0.5
            nn.init.uniform_(bags[t.name].weight, -bound, bound)
        self.embedding_bags = nn.ModuleDict(bags)

    def weight(self, name: str) -> torch.Tensor:
        """``[rows, dim]`` weight of table ``name``."""
        return cast(nn.EmbeddingBag, self.embedding_bags[name]).weight


class PlainSparse(nn.Module):
    """Mean-pooled tables as ``nn.EmbeddingBag``: JaggedFeatures -> ``{feature: [B, dim]}``."""

    def __init__(self, tables: list[TableSpec], device: torch.device | None = None):
        super().__init__()
        self.tables = list(tables)
        self.ebc = _Bags(self.tables, device)

    def forward(self, feats: JaggedFeatures) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tables:
            weight = self.ebc.weight(t.name)
            for key in t.features:
                values, offsets = feats.feature(key)
                # include_last_offset: offsets is [B + 1]; empty bags pool to zeros.
                out[key] = F.embedding_bag(values, weight, offsets, mode="mean", include_last_offset=True)
        return out


class TorchrecSparse(nn.Module):
    """A torchrec ``EmbeddingBagCollection``: JaggedFeatures -> ``{feature: [B, dim]}``.

    Built on ``device="meta"`` by default: DistributedModelParallel
    materialises the shards on each rank (DESIGN.md §9).
    """

    def __init__(self, tables: list[TableSpec], device: torch.device | str | None = "meta"):
        super().__init__()
        import torchrec

        self.tables = list(tables)
        self.ebc = torchrec.EmbeddingBagCollection(
            tables=[
                torchrec.EmbeddingBagConfig(
                    name=t.name,
                    embedding_dim=t.dim,
                    num_embeddings=t.rows,
                    feature_names=list(t.features),
                    pooling=torchrec.PoolingType.MEAN,
                )
                for t in self.tables
            ],
            device=torch.device(device) if device is not None else None,
        )

    def forward(self, feats: JaggedFeatures) -> dict[str, torch.Tensor]:
        return self.ebc(feats.to_kjt()).to_dict()


def make_sparse(tables: list[TableSpec], backend: str, device: torch.device | None) -> nn.Module:
    if backend == "torchrec":
        return TorchrecSparse(tables)
    return PlainSparse(tables, device)


class UserTower(nn.Module):
    """History (+ recent window, + user categoricals) -> L2-normalised ``[B, D]``.

    Args:
        tables: the user tower's tables (see :func:`tower_tables`).
        keys: feature order of the concatenated pooled vectors.
        mlp: hidden sizes; the last layer maps to ``dim``.
    """

    def __init__(
        self,
        tables: list[TableSpec],
        keys: list[str],
        mlp: list[int],
        dim: int,
        dropout: float = 0.0,
        backend: str = "torch",
        device: torch.device | None = None,
    ):
        super().__init__()
        self.keys = list(keys)
        self.sparse = make_sparse(tables, backend, device)
        width = {k: t.dim for t in tables for k in t.features}
        self.mlp = mlp_layers([sum(width[k] for k in self.keys), *mlp, dim], dropout).to(device)
        self.out_dim = dim

    def forward(self, feats: JaggedFeatures) -> torch.Tensor:
        """``[B, D]`` unit-norm user embeddings."""
        pooled = self.sparse(feats)
        x = torch.cat([pooled[k] for k in self.keys], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


class ItemTower(nn.Module):
    """Item id (+ categories, + content parts) -> L2-normalised ``[B, D]``.

    Without content, the pooled sparse features are concatenated and passed
    through the MLP. With ``content`` (an :class:`ItemContent`), every part
    (id, categories, text tokens, image, sentence embedding) is fused by it
    under modality dropout first, so an item lacking parts (a cold item
    lacks its trained id) still gets a vector from the rest.
    """

    def __init__(
        self,
        tables: list[TableSpec],
        keys: list[str],
        mlp: list[int],
        dim: int,
        dropout: float = 0.0,
        backend: str = "torch",
        device: torch.device | None = None,
        content: ItemContent | None = None,
    ):
        super().__init__()
        self.keys = list(keys)
        self.sparse = make_sparse(tables, backend, device)
        self.content = content
        width = {k: t.dim for t in tables for k in t.features}
        in_dim = content.out_dim if content is not None else sum(width[k] for k in self.keys)
        self.mlp = mlp_layers([in_dim, *mlp, dim], dropout).to(device)
        self.out_dim = dim

    def forward(
        self, feats: JaggedFeatures, item_idx: torch.Tensor | None = None, drop: Collection[str] = ()
    ) -> torch.Tensor:
        """``[B, D]`` unit-norm item embeddings.

        ``item_idx [B]`` (the rows of ``feats``' items) is needed with
        content; ``drop`` names parts to hide for every row (content only).
        """
        pooled = self.sparse(feats)
        if self.content is None:
            x = torch.cat([pooled[k] for k in self.keys], dim=1)
        else:
            if item_idx is None:
                raise ValueError("ItemTower: with content parts, forward() needs item_idx [B]")
            x = self.content(pooled, item_idx, drop)
        return F.normalize(self.mlp(x), dim=-1)


class TwoTowerNet(nn.Module):
    """Both towers; one forward so DistributedModelParallel shards both collections together."""

    def __init__(self, user: UserTower, item: ItemTower):
        super().__init__()
        self.user_tower = user
        self.item_tower = item

    def forward(
        self, user_feats: JaggedFeatures, item_feats: JaggedFeatures, item_idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, D] users, [M, D] items)``."""
        return self.user_tower(user_feats), self.item_tower(item_feats, item_idx)


def build_net(
    space, config, backend: str = "torch", device: torch.device | None = None, id_trained: np.ndarray | None = None
) -> TwoTowerNet:
    """Both towers for a ``FeatureSpace`` and ``TwoTowerConfig``.

    ``id_trained [N]`` marks the items whose id row is trained (targets of
    training examples; default all): with content, the others are placed
    by their content alone.
    """
    user_tables, item_tables = tower_tables(
        space.table_sizes(), space.user_keys(), space.item_keys(), config.embedding_dim
    )
    content = None
    if space.content is not None:
        content = ItemContent(
            space.content, config.content, sparse_presence(space, id_trained), config.embedding_dim, device
        )
    user = UserTower(user_tables, space.user_keys(), list(config.mlp), config.dim, config.dropout, backend, device)
    item = ItemTower(
        item_tables, space.item_keys(), list(config.mlp), config.dim, config.dropout, backend, device, content=content
    )
    return TwoTowerNet(user, item)
