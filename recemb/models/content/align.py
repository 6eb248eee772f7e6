"""The pieces of content alignment: its loss, optimisers, targets and metric.

The training loop, ``content_embeddings`` and the ``train content`` driver
are in :mod:`recemb.train.content`; it learns a :class:`ContentEncoder` that
maps each item's content to its behavioural vector.

Loss: in-batch InfoNCE (van den Oord et al. 2018). For a batch of B items
with content vectors ``z [B, D]`` and target vectors ``t [B, D]`` (both unit
norm), ``logits = z t^T / temperature`` and each item's own target is the
positive among the B; the loss is the mean cross-entropy of rows and
columns. Only the ranking of targets matters, so the content vectors live
in the same cosine space as the behavioural ones, and a query built from
behavioural vectors can retrieve a cold item by its content vector.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.nn import functional as F

from recemb.embeddings import EmbeddingSet
from recemb.models.content.config import ContentConfig
from recemb.models.content.encoder import (
    ContentFeatures,
)

__all__ = ["ContentConfig", "info_nce", "make_optimizers", "aligned_targets", "recall_at"]

log = logging.getLogger(__name__)


def recall_at(z: np.ndarray, t: np.ndarray, k: int = 10) -> float:
    """Share of items whose own target is among the top-k targets by cosine to their content vector."""
    if len(z) == 0:
        return float("nan")
    sims = z @ t.T
    own = np.diag(sims)
    rank = (sims > own[:, None]).sum(1)
    return float((rank < k).mean())


def info_nce(z: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE of content ``z [B, D]`` against their targets ``t [B, D]`` (module doc)."""
    logits = z @ t.T / temperature
    labels = torch.arange(len(z), device=z.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def make_optimizers(
    module: torch.nn.Module, lr: float, weight_decay: float, total_steps: int
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LRScheduler]]:
    """SparseAdam for sparse-gradient embedding tables, AdamW for the rest; linear warm-up then decay.

    The LR rises over the first 10% of ``total_steps`` and falls linearly to 0.
    """
    sparse, dense = [], []
    for m in module.modules():
        if isinstance(m, torch.nn.EmbeddingBag | torch.nn.Embedding) and m.sparse:
            sparse.append(m.weight)
    ids = {id(p) for p in sparse}
    dense = [p for p in module.parameters() if id(p) not in ids and p.requires_grad]
    opts: list[torch.optim.Optimizer] = []
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=lr))
    if dense:
        opts.append(torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay))
    warm = max(1, int(0.1 * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return opts, [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in opts]


def aligned_targets(feats: ContentFeatures, target: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """``([N, D] targets aligned to feature rows (zeros where absent), rows that have one)``."""
    idx = target.lookup(feats.item_ids)
    have = np.flatnonzero(idx >= 0)
    out = np.zeros((len(feats), target.dim), dtype=np.float32)
    out[have] = target.vectors[idx[have]]
    return out, have
