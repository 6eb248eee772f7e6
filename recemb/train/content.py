"""Content alignment training: the loop, ``content_embeddings``, ``train_loop`` and the ``train content`` driver.

:func:`train_content` reads the run's behavioural EmbeddingSet
(``<run>/<content.target>/embeddings``, e.g. item2vec), learns a
:class:`~recemb.models.content.encoder.ContentEncoder` that maps each item's
content to its behavioural vector (InfoNCE, recemb.models.content.align), and
writes ``<run>/content/``::

    embeddings/    EmbeddingSet, kind "content": a vector for EVERY item of
                   the items table, cold ones included (unit norm, cosine)
    encoder.pt     the encoder's state dict (torch.load(weights_only=True))
    metrics.json   per-epoch loss, coverage of each part, train/held-out recall

It runs through recemb.train.runner like every model: ``ray.workers = 0`` in
this process, ``N`` on N data-parallel ``TorchTrainer`` workers; a checkpoint
(``content.pt``: encoder, optimiser and LR-schedule state) after each epoch,
and a resumed run repeats the uninterrupted one exactly, because every epoch
reseeds its shuffle and the global torch RNG (modality dropout) from
``(seed, epoch)``.

Data parallelism: each step takes ``batch_size x W`` items of the epoch's
order and gives rank r the r-th of W equal parts (a softmax over its own
``batch_size`` in-batch negatives), and DistributedDataParallel averages the
gradients. The text and category tables are ``nn.EmbeddingBag(sparse=True)``
trained by SparseAdam: DDP all-reduces their *sparse* gradients (only the
rows a batch touched) through gloo, which implements sparse all-reduce; a
dense all-reduce of a hashed table (``buckets x dim``, 2^18 x 64 by default)
every step would move ~64 MB per step instead. NCCL has no sparse all-reduce,
so ``ray.use_gpu`` with several workers is refused here (one GPU worker, or
in-process ``content.device=cuda``, works).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recemb.embeddings import EmbeddingSet, l2_normalize
from recemb.errors import ConfigError, DataValidationError, RecembError
from recemb.io import atomic_path, write_json
from recemb.models.content.align import aligned_targets, info_nce, make_optimizers, recall_at
from recemb.models.content.config import ContentConfig
from recemb.models.content.encoder import ContentEncoder, ContentFeatures, build_features, encode_all
from recemb.models.device import resolve_device
from recemb.progress import Progress
from recemb.train.ray_config import RayTrainConfig
from recemb.train.runner import WorkerContext, experiment_dir, run_training, worker_context

log = logging.getLogger("recemb.models.content.align")
CHECKPOINT_FILE = "content.pt"


def _batches(order: np.ndarray, batch_size: int, world: int, rank: int):
    """This rank's part of each step's ``batch_size x world`` items; the same step count on every rank.

    A step with fewer than 2 items per rank is skipped (a softmax over one item teaches nothing).
    """
    step = batch_size * world
    for lo in range(0, len(order), step):
        chunk = order[lo : lo + step]
        if len(chunk) >= 2 * world:
            yield np.array_split(chunk, world)[rank]


def fit_alignment(
    feats: ContentFeatures,
    targets: np.ndarray,
    cfg: ContentConfig,
    rows: np.ndarray | None = None,
    holdout: float = 0.0,
    ctx: WorkerContext | None = None,
) -> tuple[ContentEncoder, dict[str, Any]]:
    """Train a :class:`ContentEncoder` so that ``enc(item i) ~ targets[i]``.

    Args:
        feats: content of N items.
        targets: ``[N, D]`` behavioural vectors aligned to ``feats`` rows
            (rows outside ``rows`` are ignored).
        rows: the feature rows that have a target (default: all).
        holdout: a fraction of ``rows`` kept out of training to report
            ``heldout_recall@10`` (content -> own target among held-out items).
        ctx: rank, world size and checkpoints (default: one process, no checkpoints).

    Returns:
        ``(encoder, info)``; ``info["epochs"]`` holds per-epoch losses.
    """
    ctx = ctx or WorkerContext()
    rows = np.arange(len(feats)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        raise DataValidationError(
            f"content alignment: only {len(rows)} item(s) have both content and a behavioural vector; "
            "need at least 2 (is the EmbeddingSet from the same dataset as the items table?)"
        )
    world = ctx.world_size
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    device = torch.device(ctx.device) if ctx.device else resolve_device(cfg.device, setting="content.device")
    if world > 1 and device.type == "cuda":
        raise ConfigError(
            "content alignment on several GPU workers needs a sparse all-reduce, which NCCL lacks; "
            "use ray.workers=1 with ray.use_gpu, or CPU workers"
        )
    t_all = l2_normalize(np.asarray(targets, dtype=np.float32))
    rows = np.random.default_rng(cfg.seed).permutation(rows)
    n_hold = int(round(holdout * len(rows)))
    held, train_rows = rows[:n_hold], rows[n_hold:]
    enc = ContentEncoder(cfg, feats, t_all.shape[1], device)
    model = torch.nn.parallel.DistributedDataParallel(enc) if world > 1 else enc
    steps_per_epoch = max(1, int(np.ceil(len(train_rows) / (cfg.batch_size * world))))
    opts, scheds = make_optimizers(enc, cfg.lr, cfg.weight_decay, cfg.epochs * steps_per_epoch)
    start, history = 0, []
    ckpt = ctx.latest_checkpoint()
    if ckpt is not None:
        state = torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        if state["config"] != cfg.model_dump(mode="json"):
            raise RecembError(
                f"content: the checkpoint {ckpt} was written with other settings; "
                "delete it or set ray.resume=false to start over"
            )
        enc.load_state_dict(state["encoder"])
        for opt, saved in zip(opts, state["optimizers"]):
            opt.load_state_dict(saved)
        for sched, saved in zip(scheds, state["schedulers"]):
            sched.load_state_dict(saved)
        start, history = int(state["epoch"]), list(state["history"])
        log.info("content: resumed after epoch %d", start)
    t_dev = torch.from_numpy(t_all).to(device)
    t0 = time.perf_counter()
    label = f"content alignment x{world}" if world > 1 else "content alignment"
    with Progress(label, cfg.epochs - start, "epoch", enabled=ctx.rank == 0) as progress:
        for epoch in ctx.epochs(start, cfg.epochs):
            enc.train()
            # Per-epoch seeds: a resumed run draws what the uninterrupted one drew.
            order = np.random.default_rng([cfg.seed, epoch]).permutation(train_rows)
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + ctx.rank)
            total, n = 0.0, 0
            for b in _batches(order, cfg.batch_size, world, ctx.rank):
                z = model(feats.batch(b, device))
                loss = info_nce(z, t_dev[torch.from_numpy(b).to(device)], cfg.temperature)
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt, sched in zip(opts, scheds):
                    opt.step()
                    sched.step()
                total += float(loss.detach()) * len(b)
                n += len(b)
            if world > 1:
                sums = torch.tensor([total, n], dtype=torch.float64)
                torch.distributed.all_reduce(sums)
                total, n = sums.tolist()
            history.append({"epoch": epoch, "loss": total / max(n, 1)})
            ctx.note(progress, f"content epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f}")
            ctx.report(
                epoch + 1, {"epoch": epoch + 1, "loss": history[-1]["loss"]}, _writer(enc, opts, scheds, cfg, history)
            )
            progress.update(1, loss=history[-1]["loss"])
        progress.summary = f"{len(train_rows)} items, final loss {history[-1]['loss']:.3f}" if history else ""
    seconds = time.perf_counter() - t0
    z = encode_all(enc, feats)
    info: dict[str, Any] = {
        "epochs": history,
        "train_seconds": seconds,
        "train_items": int(len(train_rows)),
        "train_recall@10": recall_at(z[train_rows], t_all[train_rows]),
        "coverage": feats.coverage(),
        "device": str(device),
        "workers": world,
    }
    if n_hold:
        info["heldout_items"] = int(n_hold)
        info["heldout_recall@10"] = recall_at(z[held], t_all[held])
    return enc, info


def _writer(enc: ContentEncoder, opts, scheds, cfg: ContentConfig, history: list[dict[str, Any]]):
    """Writes this epoch's ``content.pt`` (tensors and plain values only: weights_only loads it)."""
    state = {
        "encoder": {k: v.detach().cpu() for k, v in enc.state_dict().items()},
        "optimizers": [o.state_dict() for o in opts],
        "schedulers": [s.state_dict() for s in scheds],
        "epoch": len(history),
        "history": list(history),
        "config": cfg.model_dump(mode="json"),
    }
    return lambda out: torch.save(state, out / CHECKPOINT_FILE)


def content_embeddings(
    items: pl.DataFrame,
    root: Path | None,
    target: EmbeddingSet,
    cfg: ContentConfig,
    cache_dir: Path | None = None,
    holdout: float = 0.0,
    ctx: WorkerContext | None = None,
) -> tuple[EmbeddingSet, ContentEncoder, dict[str, Any]]:
    """Align on the items that ``target`` covers; return a content EmbeddingSet of ALL ``items``."""
    device = (
        torch.device(ctx.device)
        if ctx is not None and ctx.device
        else resolve_device(cfg.device, setting="content.device")
    )
    feats = build_features(items, root, cfg, cache_dir, device)
    targets, rows = aligned_targets(feats, target)
    enc, info = fit_alignment(feats, targets, cfg, rows, holdout, ctx)
    info["target"] = {"kind": target.kind, "count": len(target), "matched": int(len(rows))}
    vectors = encode_all(enc, feats)
    es = EmbeddingSet(
        feats.item_ids,
        vectors,
        kind="content",
        metric="cosine",
        normalized=True,
        config=cfg.model_dump(mode="json"),
        metrics=info,
    )
    return es, enc, info


def train_loop(config: dict[str, Any]) -> None:
    """Align content on this worker (in-process or in a Ray Train worker); rank 0 writes ``out_dir``.

    ``config`` keys: ``content`` (the section), ``data_dir`` (prepared tables), ``target_dir``
    (the behavioural EmbeddingSet), ``out_dir`` (``<run>/content``), ``cache_dir``, and the runner's.
    """
    from recemb.data.dataset import load_dataset

    ctx = worker_context(config)
    content = ContentConfig.model_validate(config["content"])
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    ds = load_dataset(config["data_dir"])
    if ds.items is None:  # the driver checked; the data directory changed since
        raise DataValidationError(f"{config['data_dir']}: the dataset has no items table; content encoders need items")
    behaviour = EmbeddingSet.load(config["target_dir"])
    cache = Path(config["cache_dir"]) if config.get("cache_dir") else None
    es, enc, info = content_embeddings(ds.items, ds.root, behaviour, content, cache, holdout=0.1, ctx=ctx)
    if ctx.rank != 0:
        return
    out = Path(config["out_dir"])
    es.save(out / "embeddings")
    with atomic_path(out / "encoder.pt") as tmp:
        torch.save({k: v.cpu() for k, v in enc.state_dict().items()}, tmp)
    write_json(out / "metrics.json", {**info, "config": config["content"], "source": config["target_dir"]})
    log.info(
        "content: %d items -> %s (held-out recall@10 %.3f)", len(es), out, info.get("heldout_recall@10", float("nan"))
    )


def train_content(
    content: ContentConfig,
    ray: RayTrainConfig,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Align content to ``<run_dir>/<content.target>/embeddings``; write ``<run_dir>/content/`` (module doc).

    Args:
        content: the ``content:`` section (``target`` names the behavioural model).
        ray: the ``ray:`` section (``workers = 0``: in this process).
        data_dir: the prepared canonical tables (an items table is required).
        run_dir: the run's output directory; checkpoints under ``ray.storage(run_dir)/<name or "content">``.
        cache_dir: where frozen image / sentence features are cached.
    """
    from recemb.data.dataset import load_dataset

    run_dir = Path(run_dir)
    src = run_dir / content.target / "embeddings"
    if not src.exists():
        raise RecembError(
            f"{src}: no behavioural EmbeddingSet to align content to; run `recemb train "
            f"{content.target.replace('_', '-')} CONFIG` first (or set content.target)"
        )
    if load_dataset(data_dir).items is None:
        raise DataValidationError(
            f"{data_dir}: the dataset has no items table; content encoders need items.parquet "
            "(title, text, category, image_path)"
        )
    out = run_dir / "content"
    loop_config = {
        "content": content.model_dump(mode="json"),
        "data_dir": str(Path(data_dir).resolve()),
        "target_dir": str(src.resolve()),
        "out_dir": str(out.resolve()),
        "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None,
    }
    run_training(train_loop, loop_config, ray, experiment_dir(ray, run_dir, "content"))
    return out
