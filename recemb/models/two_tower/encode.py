"""Plain-torch towers -> vectors and files: what training and the fitted model both need.

Used by ``TwoTower`` (recemb.models.two_tower.model) and by the training loop
(recemb.train.two_tower), which must not import each other: encoding items
and user histories in batches, the EmbeddingSets of items and users, a plain
net from a gathered state, and the user tower export.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recemb.embeddings import EmbeddingSet
from recemb.io import atomic_dir, write_json
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.features import Collator, FeatureSpace, user_sequences
from recemb.models.two_tower.towers import TwoTowerNet, UserTower, build_net

USER_TOWER_FORMAT = 1
ENCODE_BATCH = 4096


@torch.no_grad()
def encode_items(
    net: TwoTowerNet,
    collate: Collator,
    item_idx: np.ndarray,
    device: torch.device | str = "cpu",
    drop: tuple[str, ...] = (),
) -> np.ndarray:
    """``[len(item_idx), D]`` float32 item-tower outputs (``drop``: parts hidden, see ItemTower)."""
    net.eval()
    out = []
    for s in range(0, len(item_idx), ENCODE_BATCH):
        idx = np.asarray(item_idx[s : s + ENCODE_BATCH], dtype=np.int64)
        feats = collate.items(idx).to(device)
        out.append(net.item_tower(feats, torch.from_numpy(idx).to(device), drop).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.item_tower.out_dim), np.float32)


@torch.no_grad()
def encode_users(
    tower: UserTower,
    collate: Collator,
    seq: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    user_rows: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``[B, D]`` float32 user-tower outputs for history windows into ``seq`` (oldest first)."""
    tower.eval()
    out = []
    for s in range(0, len(starts), ENCODE_BATCH):
        sl = slice(s, s + ENCODE_BATCH)
        rows = None if user_rows is None else user_rows[sl]
        feats = collate.users(seq, starts[sl], lengths[sl], rows).to(device)
        out.append(tower(feats).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, tower.out_dim), np.float32)


def item_embedding_set(
    net: TwoTowerNet, space: FeatureSpace, history: list[dict[str, Any]], drop: tuple[str, ...] = ()
) -> EmbeddingSet:
    """Every catalogue item's ``[N, D]`` unit-norm vector (kind "two_tower_items", metric cosine)."""
    vectors = encode_items(net, Collator(space), np.arange(len(space.items)), drop=drop)
    return EmbeddingSet(
        space.items.ids,
        vectors,
        kind="two_tower_items",
        metric="cosine",
        normalized=True,
        config=space.config.model_dump(mode="json"),
        metrics={"epochs": history},
    )


def encode_histories(
    net: TwoTowerNet,
    space: FeatureSpace,
    items: np.ndarray,
    offsets: np.ndarray,
    user_ids: np.ndarray | None = None,
) -> np.ndarray:
    """``[B, D]`` user vectors from CSR histories of item indices (``offsets`` ``[B + 1]``)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    rows = space.user_rows(user_ids, len(offsets) - 1)
    return encode_users(
        net.user_tower, Collator(space), np.asarray(items, dtype=np.int64), offsets[:-1], np.diff(offsets), rows
    )


def user_embedding_set(net: TwoTowerNet, space: FeatureSpace, events: pl.DataFrame) -> EmbeddingSet:
    """One ``[U, D]`` vector per user of ``events``, from their latest ``history_length`` items."""
    seq, offsets, users = user_sequences(events, space)
    ids = users.to_numpy()
    return histories_embedding_set(net, space, ids, encode_histories(net, space, seq, offsets, ids))


def histories_embedding_set(
    net: TwoTowerNet, space: FeatureSpace, user_ids: np.ndarray, vectors: np.ndarray
) -> EmbeddingSet:
    """The users' EmbeddingSet (kind "two_tower_users") of their ``[U, D]`` user-tower vectors."""
    return EmbeddingSet(np.asarray(user_ids).astype(object), vectors, **user_set_meta(space))


def user_set_meta(space: FeatureSpace) -> dict[str, Any]:
    """What describes a users' EmbeddingSet: kind, metric (the tower's outputs are unit vectors), config."""
    return {
        "kind": "two_tower_users",
        "metric": "cosine",
        "normalized": True,
        "config": space.config.model_dump(mode="json"),
    }


def save_user_tower(tower: UserTower, space: FeatureSpace, out_dir: str | os.PathLike) -> Path:
    """Write ``state_dict.pt`` (plain tensors), ``config.json`` and the vocabularies, atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in tower.state_dict().items()}
        torch.save(state, tmp / "state_dict.pt")
        space.items.save(tmp / "items.parquet")
        for col, vocab in zip(space.user_columns, space.user_vocabs):
            vocab.save(tmp / f"user_{col}.parquet")
        write_json(
            tmp / "config.json",
            {
                "format": USER_TOWER_FORMAT,
                "two_tower": space.config.model_dump(mode="json"),
                "table_sizes": space.table_sizes(),
                "user_keys": space.user_keys(),
            },
        )
    return out_dir


def build_plain_net(
    space: FeatureSpace, config: TwoTowerConfig, state: dict[str, torch.Tensor], device: torch.device | str = "cpu"
) -> TwoTowerNet:
    """A plain-torch TwoTowerNet holding a gathered (unsharded) model state."""
    net = build_net(space, config, "torch", torch.device(device))
    net.load_state_dict(state)
    return net.eval()
