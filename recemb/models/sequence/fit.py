"""``fit_sequence``: the sequence model's training, in-process (``SequenceModel.fit``) and on each Ray worker.

:func:`training_data` builds the vocabulary and the training windows from
canonical events (``SequenceModel.fit``; the Ray job reads them from its
window store instead, recemb.models.sequence.window_store). :func:`fit_sequence`
takes this worker's share of the windows, wraps the network in
DistributedDataParallel when there are several workers (gloo on CPU, NCCL on
GPU), resumes from the newest checkpoint and runs the epoch loop
(:mod:`.epochs`), writing a checkpoint after each epoch (rank 0).

Checkpoint directory (tensors and JSON only)::

    checkpoint_epoch_0003/
      state.pt       {"net": state dict, "optimizer": Adam state}  (torch.load(weights_only=True))
      items.parquet  the item vocabulary
      state.json     epoch done, sequence config, data sha256, per-epoch history
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, DataValidationError, RecembError
from recemb.io import write_json
from recemb.models.device import resolve_device
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.epochs import SequenceTrainer, uses_full_softmax
from recemb.models.sequence.net import ItemCategories, SequenceNet
from recemb.models.sequence.windows import Windows, build_sequences, repeat_rate, training_windows
from recemb.progress import Progress
from recemb.train.runner import WorkerContext

log = logging.getLogger("recemb.sequence")

SCHEMA_VERSION = 2  # 2: the data digest reads the windows' CSR spans (1 hashed padded arrays)
# Settings that change what a checkpoint's weights mean; epochs may grow (that extends a run).
MODEL_KEYS = tuple(
    k for k in SequenceConfig.model_fields if k not in ("epochs", "device", "threads", "full_softmax_max_items")
)


def data_digest(windows: Windows, vocab: Vocab, categories: ItemCategories | None = None) -> str:
    """sha256 over the training windows, item ids and categories: a checkpoint resumes only on the same data."""
    h = hashlib.sha256(f"windows of {windows.width}".encode())
    arrays = [windows.in_memory().items, windows.in_memory().gaps, windows.starts, windows.lengths]
    if categories is not None:
        arrays += [categories.offsets, categories.values]
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    h.update("\n".join(vocab.ids.tolist()).encode())
    return h.hexdigest()


def resume_problem(state: dict[str, Any], config: SequenceConfig, digest: str) -> str | None:
    """Why a checkpoint cannot continue training ``config`` on data ``digest`` (None if it can)."""
    if state.get("schema_version") != SCHEMA_VERSION:
        return f"checkpoint schema {state.get('schema_version')} is not {SCHEMA_VERSION}"
    if state.get("data_sha256") != digest:
        return "it was trained on other events"
    old = state.get("config", {})
    diff = [f"{k}={old.get(k)!r} (now {getattr(config, k)!r})" for k in MODEL_KEYS if old.get(k) != getattr(config, k)]
    return "it was trained with " + ", ".join(diff) if diff else None


@dataclass(frozen=True)
class TrainingData:
    """What a training process needs: built from events (:func:`training_data`) or read from a
    window store (recemb.models.sequence.window_store).

    Attributes:
        vocab: the item vocabulary (event items in frequency order, then cold ones with categories).
        windows: the training windows (and the sequences they cut).
        digest: sha256 of the windows, item ids and categories (checkpoints resume only on the same).
        categories: every item's categories, with ``item_categories``.
        repeat_rate: share of the targets that repeat an item of their own sequence.
    """

    vocab: Vocab
    windows: Windows
    digest: str
    categories: ItemCategories | None
    repeat_rate: float


def training_data(
    config: SequenceConfig,
    events: pl.DataFrame,
    catalogue: Vocab | None = None,
    items: pl.DataFrame | None = None,
) -> TrainingData:
    """The training data of canonical ``events`` (items limited to ``catalogue``).

    The vocabulary is the event items in frequency order; with
    ``item_categories`` the ``items`` table's other items follow them (cold
    items, placed by their categories). Every rank of a run builds the same,
    and the digest ties checkpoints to them.
    """
    if events.height == 0:
        raise DataValidationError("sequence model: the events table is empty; nothing to train on")
    ids = events["item_id"]
    if catalogue is not None:
        ids = ids.filter(ids.is_in(pl.Series(catalogue.ids.tolist(), dtype=pl.String).implode()))
    vocab = Vocab.from_ids(ids)
    categories = None
    if config.item_categories:
        vocab, categories = with_categories(vocab, items, catalogue)
    seqs = build_sequences(events, vocab, config.gap_buckets)
    windows = training_windows(seqs, config.max_length)
    if len(windows) == 0:
        raise DataValidationError(
            "sequence model: no session or history has 2 or more events, so there is no next item to learn; "
            "check session_id (or sessionize with a longer gap)"
        )
    return TrainingData(vocab, windows, data_digest(windows, vocab, categories), categories, repeat_rate(seqs))


def with_categories(vocab: Vocab, items: pl.DataFrame | None, catalogue: Vocab | None) -> tuple[Vocab, ItemCategories]:
    """The event vocabulary extended by the items table's other items, and everyone's categories (CSR)."""
    if items is None or "category" not in items.columns:
        raise ConfigError(
            "sequence.item_categories=true needs an items table with a `category` column; "
            "the dataset has none (set sequence.item_categories=false)"
        )
    table = items.select("item_id", "category")
    if catalogue is not None:
        table = table.filter(pl.col("item_id").is_in(pl.Series(catalogue.ids.tolist(), dtype=pl.String).implode()))
    cold = table.filter(~pl.col("item_id").is_in(pl.Series(vocab.ids.tolist(), dtype=pl.String).implode()))
    cold_ids = cold["item_id"].unique(maintain_order=True).to_list()
    full = Vocab([*vocab.ids.tolist(), *cold_ids], np.concatenate([vocab.counts, np.zeros(len(cold_ids), np.int64)]))
    pairs = table.explode("category").drop_nulls("category")
    names = Vocab.from_ids(pairs["category"])
    rows, values = full.lookup(pairs["item_id"]), names.lookup(pairs["category"])
    keep = rows >= 0
    order = np.argsort(rows[keep], kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=len(full)))]).astype(np.int64)
    return full, ItemCategories(offsets, values[keep][order], len(names), trained=len(vocab))


def uses_repeat_path(config: SequenceConfig, rate: float) -> bool:
    """``config.repeat``, or under ``"auto"``: does the data repeat items (``rate`` >= ``repeat_min_rate``)?"""
    if isinstance(config.repeat, bool):
        return config.repeat
    return rate >= config.repeat_min_rate


def fit_sequence(
    config: SequenceConfig, data: TrainingData, ctx: WorkerContext
) -> tuple[Vocab, SequenceNet, list[dict[str, Any]]]:
    """Train on ``data`` as worker ``ctx.rank`` of ``ctx.world_size``; return ``(vocab, net, history)``.

    Every rank has the same windows and trains on its share; rank 0 writes
    a checkpoint after each epoch.
    """
    vocab, windows, digest, categories = data.vocab, data.windows, data.digest, data.categories
    n_targets = int(data.windows.lengths.sum())
    if ctx.world_size > 1:
        # Every rank gets ceil(W / world) windows (the last few wrap around to the first), so every
        # rank runs the same number of steps: DDP's gradient all-reduce needs all ranks at each one.
        padded = -(-len(windows) // ctx.world_size) * ctx.world_size
        share = np.arange(ctx.rank, padded, ctx.world_size) % len(windows)
        windows = windows.take(share)
    if config.threads or ctx.threads:
        torch.set_num_threads(config.threads or ctx.threads)
    device = torch.device(ctx.device) if ctx.device else resolve_device(config.device, setting="sequence.device")
    torch.manual_seed(config.seed)  # the initial weights; every rank starts from the same ones
    net = SequenceNet(len(vocab), config, categories, repeat=uses_repeat_path(config, data.repeat_rate)).to(device)
    wrapped: torch.nn.Module = net
    if ctx.world_size > 1 and torch.distributed.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = SequenceTrainer(wrapped, net, config, device)

    start, history = 0, []
    ckpt = ctx.latest_checkpoint()
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
        why = resume_problem(state, config, digest)
        if why:
            raise RecembError(f"checkpoint {ckpt} cannot be resumed: {why}; delete it or set ray.resume=false")
        trainer.load_state(torch.load(ckpt / "state.pt", map_location=device, weights_only=True))
        start, history = int(state["epoch"]), list(state["history"])
        if ctx.rank == 0:
            log.info("sequence: resuming from %s at epoch %d/%d", ckpt.name, start + 1, config.epochs)

    progress = Progress("sequence", config.epochs, unit="epoch")
    loss_kind = "full softmax" if uses_full_softmax(config, len(vocab)) else f"sampled softmax ({config.negatives})"
    repeats = f"repeat path {'on' if net.repeat else 'off'} ({data.repeat_rate:.1%} of targets repeat)"
    ctx.note(
        progress,
        f"sequence: {len(vocab)} items, {n_targets} targets in {len(windows)} windows, {loss_kind}, {repeats}",
    )
    for epoch in ctx.epochs(start, config.epochs):
        stats = trainer.run_epoch(windows, epoch, ctx.rank)
        row = {"epoch": epoch + 1, **stats, "targets_per_s": stats["targets"] / max(stats["seconds"], 1e-9)}
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process (Linux: KiB)
        history.append(row)
        ctx.note(progress, f"sequence epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, {row['seconds']:.1f}s")

        def write(out: Path, history: list[dict[str, Any]] = history) -> None:
            torch.save(_to_cpu(trainer.state()), out / "state.pt")
            vocab.save(out / "items.parquet")
            write_json(
                out / "state.json",
                {
                    "schema_version": SCHEMA_VERSION,
                    "epoch": history[-1]["epoch"],
                    "config": config.model_dump(mode="json"),
                    "data_sha256": digest,
                    "history": history,
                    "workers": ctx.world_size,
                },
            )

        ctx.report(epoch + 1, {"epoch": epoch + 1, "loss": row["loss"]}, write)
        ctx.epoch_done(epoch + 1, partial(tuple, (vocab, net, list(history))))
    return vocab, net.eval().cpu(), history


def _to_cpu(obj: Any) -> Any:
    """A nested state with every tensor moved to the CPU (a checkpoint loads on any device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
