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

Towers know nothing of the loss (recemb.models.two_tower.task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recemb.models.two_tower.features import JaggedFeatures


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: ``rows`` x ``dim``, mean-pooled for each of ``features``."""

    name: str
    rows: int
    dim: int
    features: tuple[str, ...]


def tower_tables(sizes: dict[str, int], user_keys: list[str], item_keys: list[str], dim: int) -> tuple[
    list[TableSpec], list[TableSpec]
]:
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
    return user, item


class _Bags(nn.Module):
    """Holds ``embedding_bags`` so plain and torchrec parameter names agree."""

    def __init__(self, tables: list[TableSpec], device: torch.device | None):
        super().__init__()
        self.embedding_bags = nn.ModuleDict(
            {t.name: nn.EmbeddingBag(t.rows, t.dim, mode="mean", device=device) for t in tables}
        )
        for t in tables:
            # torchrec's default initialiser, so both backends start alike.
            bound = (1.0 / t.rows) ** 0.5
            nn.init.uniform_(self.embedding_bags[t.name].weight, -bound, bound)


class PlainSparse(nn.Module):
    """Mean-pooled tables as ``nn.EmbeddingBag``: JaggedFeatures -> ``{feature: [B, dim]}``."""

    def __init__(self, tables: list[TableSpec], device: torch.device | None = None):
        super().__init__()
        self.tables = list(tables)
        self.ebc = _Bags(self.tables, device)

    def forward(self, feats: JaggedFeatures) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tables:
            bag = self.ebc.embedding_bags[t.name]
            for key in t.features:
                values, offsets = feats.feature(key)
                # include_last_offset: offsets is [B + 1]; empty bags pool to zeros.
                out[key] = F.embedding_bag(values, bag.weight, offsets, mode="mean", include_last_offset=True)
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


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


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

    def __init__(self, tables: list[TableSpec], keys: list[str], mlp: list[int], dim: int, dropout: float = 0.0,
                 backend: str = "torch", device: torch.device | None = None):
        super().__init__()
        self.keys = list(keys)
        self.sparse = make_sparse(tables, backend, device)
        width = {k: t.dim for t in tables for k in t.features}
        self.mlp = _mlp([sum(width[k] for k in self.keys), *mlp, dim], dropout).to(device)

    def forward(self, feats: JaggedFeatures) -> torch.Tensor:
        """``[B, D]`` unit-norm user embeddings."""
        pooled = self.sparse(feats)
        x = torch.cat([pooled[k] for k in self.keys], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


class ItemTower(nn.Module):
    """Item id (+ categories, + content features) -> L2-normalised ``[B, D]``.

    Content hook: ``content`` is a module (or callable) mapping ``[B]`` item
    indices to ``[B, C]`` float features (a frozen text/image encoder's
    output, see :class:`PrecomputedContent`); its output is concatenated
    with the pooled sparse features before the MLP. ``content_dim`` = C.
    """

    def __init__(self, tables: list[TableSpec], keys: list[str], mlp: list[int], dim: int, dropout: float = 0.0,
                 backend: str = "torch", device: torch.device | None = None,
                 content: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None, content_dim: int = 0):
        super().__init__()
        self.keys = list(keys)
        self.sparse = make_sparse(tables, backend, device)
        self.content = content
        self.content_dim = content_dim if content is not None else 0
        width = {k: t.dim for t in tables for k in t.features}
        self.mlp = _mlp([sum(width[k] for k in self.keys) + self.content_dim, *mlp, dim], dropout).to(device)

    def forward(self, feats: JaggedFeatures, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, D]`` unit-norm item embeddings; ``item_idx`` ``[B]`` feeds the content hook."""
        pooled = self.sparse(feats)
        parts = [pooled[k] for k in self.keys]
        if self.content is not None:
            if item_idx is None:
                raise ValueError("ItemTower: a content hook is set, so forward() needs item_idx [B]")
            parts.append(self.content(item_idx))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class PrecomputedContent(nn.Module):
    """Content hook over a fixed ``[N, C]`` feature matrix (e.g. frozen sentence embeddings)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.register_buffer("features", features.float())

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        return self.features[item_idx]


class TwoTowerNet(nn.Module):
    """Both towers; one forward so DistributedModelParallel shards both collections together."""

    def __init__(self, user: UserTower, item: ItemTower):
        super().__init__()
        self.user_tower = user
        self.item_tower = item

    def forward(self, user_feats: JaggedFeatures, item_feats: JaggedFeatures,
                item_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, D] users, [M, D] items)``."""
        return self.user_tower(user_feats), self.item_tower(item_feats, item_idx)


def build_net(space, config, backend: str = "torch", device: torch.device | None = None,
              content: nn.Module | None = None) -> TwoTowerNet:
    """Both towers for a ``FeatureSpace`` and ``TwoTowerConfig``; ``content`` is the item content hook."""
    user_tables, item_tables = tower_tables(
        space.table_sizes(), space.user_keys(), space.item_keys(), config.embedding_dim
    )
    content_dim = config.content_dim if content is not None else 0
    if content is not None and content_dim <= 0:
        raise ValueError("two_tower.content_dim must be the width C of the content hook's [B, C] output")
    user = UserTower(user_tables, space.user_keys(), list(config.mlp), config.dim, config.dropout, backend, device)
    item = ItemTower(item_tables, space.item_keys(), list(config.mlp), config.dim, config.dropout, backend, device,
                     content=content, content_dim=content_dim)
    return TwoTowerNet(user, item)
