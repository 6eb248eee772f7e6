"""Align content to a behavioural space; export content vectors for every item.

``recemb train content CONFIG`` / ``python -m jobs.train_content``:
:func:`train_content` reads the run's behavioural EmbeddingSet
(``<run>/<content.target>/embeddings``, e.g. item2vec), learns a
:class:`ContentEncoder` that maps each item's content to its behavioural
vector, and writes ``<run>/content/``::

    embeddings/    EmbeddingSet, kind "content": a vector for EVERY item of
                   the items table, cold ones included (unit norm, cosine)
    encoder.pt     the encoder's state dict (torch.load(weights_only=True))
    metrics.json   per-epoch loss, coverage of each part, train/held-out recall

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
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.nn import functional as F

from recemb.config import PipelineConfig, config_to_dict
from recemb.data.dataset import load_dataset
from recemb.embeddings import EmbeddingSet, l2_normalize
from recemb.errors import DataValidationError, RecembError
from recemb.io import atomic_path, write_json
from recemb.models.content.config import ContentConfig
from recemb.models.content.encoder import (
    ContentEncoder,
    ContentFeatures,
    build_features,
    encode_all,
    resolve_device,
)
from recemb.progress import Progress

__all__ = ["ContentConfig", "fit_alignment", "make_optimizers", "content_embeddings", "train_content"]

log = logging.getLogger(__name__)


def _recall_at(z: np.ndarray, t: np.ndarray, k: int = 10) -> float:
    """Share of items whose own target is among the top-k targets by cosine to their content vector."""
    if len(z) == 0:
        return float("nan")
    sims = z @ t.T
    own = np.diag(sims)
    rank = (sims > own[:, None]).sum(1)
    return float((rank < k).mean())


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


def fit_alignment(
    feats: ContentFeatures,
    targets: np.ndarray,
    cfg: ContentConfig,
    rows: np.ndarray | None = None,
    holdout: float = 0.0,
) -> tuple[ContentEncoder, dict[str, Any]]:
    """Train a :class:`ContentEncoder` so that ``enc(item i) ~ targets[i]``.

    Args:
        feats: content of N items.
        targets: ``[N, D]`` behavioural vectors aligned to ``feats`` rows
            (rows outside ``rows`` are ignored).
        rows: the feature rows that have a target (default: all).
        holdout: a fraction of ``rows`` kept out of training to report
            ``heldout_recall@10`` (content -> own target among held-out items).

    Returns:
        ``(encoder, history)``; history holds per-epoch losses and recalls.
    """
    rows = np.arange(len(feats)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        raise DataValidationError(
            f"content alignment: only {len(rows)} item(s) have both content and a behavioural vector; "
            "need at least 2 (is the EmbeddingSet from the same dataset as the items table?)"
        )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    t_all = l2_normalize(np.asarray(targets, dtype=np.float32))
    rows = rng.permutation(rows)
    n_hold = int(round(holdout * len(rows)))
    held, train_rows = rows[:n_hold], rows[n_hold:]
    enc = ContentEncoder(cfg, feats, t_all.shape[1], device)
    steps_per_epoch = max(1, int(np.ceil(len(train_rows) / cfg.batch_size)))
    opts, scheds = make_optimizers(enc, cfg.lr, cfg.weight_decay, cfg.epochs * steps_per_epoch)
    t_dev = torch.from_numpy(t_all).to(device)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with Progress("content alignment", cfg.epochs, "epoch") as progress:
        for epoch in range(cfg.epochs):
            enc.train()
            order = rng.permutation(train_rows)
            total, n = 0.0, 0
            for lo in range(0, len(order), cfg.batch_size):
                b = order[lo : lo + cfg.batch_size]
                if len(b) < 2:  # a softmax over one item teaches nothing
                    continue
                z = enc(feats.batch(b, device))
                logits = z @ t_dev[torch.from_numpy(b).to(device)].T / cfg.temperature
                labels = torch.arange(len(b), device=device)
                loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt, sched in zip(opts, scheds):
                    opt.step()
                    sched.step()
                total += float(loss.detach()) * len(b)
                n += len(b)
            history.append({"epoch": epoch, "loss": total / max(n, 1)})
            progress.update(1, loss=history[-1]["loss"])
        progress.summary = f"{len(train_rows)} items, final loss {history[-1]['loss']:.3f}" if history else ""
    seconds = time.perf_counter() - t0
    z = encode_all(enc, feats)
    info: dict[str, Any] = {
        "epochs": history,
        "train_seconds": seconds,
        "train_items": int(len(train_rows)),
        "train_recall@10": _recall_at(z[train_rows], t_all[train_rows]),
        "coverage": feats.coverage(),
        "device": str(device),
    }
    if n_hold:
        info["heldout_items"] = int(n_hold)
        info["heldout_recall@10"] = _recall_at(z[held], t_all[held])
    return enc, info


def aligned_targets(feats: ContentFeatures, target: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """``([N, D] targets aligned to feature rows (zeros where absent), rows that have one)``."""
    idx = target.lookup(feats.item_ids)
    have = np.flatnonzero(idx >= 0)
    out = np.zeros((len(feats), target.dim), dtype=np.float32)
    out[have] = target.vectors[idx[have]]
    return out, have


def content_embeddings(
    items: pl.DataFrame,
    root: Path | None,
    target: EmbeddingSet,
    cfg: ContentConfig,
    cache_dir: Path | None = None,
    holdout: float = 0.0,
) -> tuple[EmbeddingSet, ContentEncoder, dict[str, Any]]:
    """Align on the items that ``target`` covers; return a content EmbeddingSet of ALL ``items``."""
    feats = build_features(items, root, cfg, cache_dir, resolve_device(cfg.device))
    targets, rows = aligned_targets(feats, target)
    enc, info = fit_alignment(feats, targets, cfg, rows, holdout)
    info["target"] = {"kind": target.kind, "count": len(target), "matched": int(len(rows))}
    vectors = encode_all(enc, feats)
    es = EmbeddingSet(
        feats.item_ids,
        vectors,
        kind="content",
        metric="cosine",
        normalized=True,
        config=config_to_dict(cfg),
        metrics=info,
    )
    return es, enc, info


def train_content(cfg: PipelineConfig, target: str | None = None, content: ContentConfig | None = None) -> Path:
    """Align content to ``<run>/<target>/embeddings``; write ``<run>/content/`` (module doc).

    ``content`` defaults to ``cfg.content``; ``target`` to its ``target``.
    """
    content = content or cfg.content
    target = target or content.target
    src = cfg.run_dir / target / "embeddings"
    if not src.exists():
        raise RecembError(
            f"{src}: no behavioural EmbeddingSet to align content to; run `recemb train {target.replace('_', '-')} "
            f"CONFIG` first (or set content.target)"
        )
    behaviour = EmbeddingSet.load(src)
    ds = load_dataset(cfg.prepared_dir)
    if ds.items is None:
        raise DataValidationError(
            f"{cfg.prepared_dir}: the dataset has no items table; content encoders need items.parquet "
            "(title, text, category, image_path)"
        )
    out = cfg.run_dir / "content"
    cache = cfg.content_cache_dir(content)
    es, enc, info = content_embeddings(ds.items, ds.root, behaviour, content, cache, holdout=0.1)
    es.save(out / "embeddings")
    with atomic_path(out / "encoder.pt") as tmp:
        torch.save({k: v.cpu() for k, v in enc.state_dict().items()}, tmp)
    write_json(out / "metrics.json", {**info, "config": config_to_dict(content), "source": str(src)})
    log.info(
        "content: %d items -> %s (held-out recall@10 %.3f)", len(es), out, info.get("heldout_recall@10", float("nan"))
    )
    return out
