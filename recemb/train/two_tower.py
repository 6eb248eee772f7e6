"""Two-tower training: the epoch loop, per-epoch validation, ``train_loop`` and the ``train two-tower`` driver.

- :func:`fit_loop`: one process's loop (rank r of W trains on its share of
  each epoch's blocks of examples, shuffled a few blocks at a time,
  recemb.models.two_tower.example_store; W = 1 in-process). Fused RowWiseAdagrad
  for tables + Adam for dense layers under DistributedModelParallel
  (recemb.models.two_tower.distributed). After each epoch the unsharded
  state is gathered to rank 0, which measures validation Recall@K and
  writes a checkpoint (``two_tower.pt``, tensors only, read back with
  ``torch.load(weights_only=True)``); a restart resumes from the last one.
- :func:`fit_two_tower`: tables -> features -> :func:`fit_loop` in memory,
  the code path of ``TwoTower.fit`` (the job's workers run the same loop
  over the same examples, read from the store below).
- :func:`prepare_examples`: in a child process of the driver, the prepared
  dataset split leave-last-out (trains on train, validates on the
  validation item) into an example store on disk, beside the checkpoints
  (``<storage>/two_tower.examples``), reused while events and settings stay.
- :func:`train_loop`: ``train_loop(config: dict)``, the same function in one
  process and in each ``TorchTrainer`` worker (recemb.train.runner): reads
  the store (never the events, so its memory does not grow with them), and
  on rank 0 exports ``embeddings/``, ``user_embeddings/``, ``user_tower/``
  and ``metrics.json`` (with the process's ``peak_rss_mb``).
- :func:`train_two_tower`: the driver.

With W > 1 in-batch negatives are each rank's local batch (no all-gather).
This module never imports recemb.models.two_tower.model (which calls it).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recemb.data.vocab import Vocab
from recemb.embeddings import write_embedding_set_blocks
from recemb.errors import DataValidationError, RecembError
from recemb.io import write_json
from recemb.models.device import resolve_device, resolve_sparse_backend
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.distributed import Engine
from recemb.models.two_tower.encode import (
    build_plain_net,
    encode_items,
    encode_users,
    item_embedding_set,
    save_user_tower,
    user_set_meta,
)
from recemb.models.two_tower.example_store import (
    VALIDATION_FIELDS,
    EpochPlan,
    ExampleSource,
    InMemoryExamples,
    Seq,
    Store,
    epoch_batches,
    read_windows,
    write_store,
)
from recemb.models.two_tower.features import (
    Collator,
    Examples,
    FeatureSpace,
    build_examples,
    gather_windows,
    item_vocab,
    user_sequences,
)
from recemb.models.two_tower.task import RetrievalTask
from recemb.models.two_tower.towers import TwoTowerNet, build_net
from recemb.progress import Progress, fmt_number
from recemb.train.ray_config import RayTrainConfig
from recemb.train.runner import WorkerContext, ensure_prepared, experiment_dir, run_training, worker_context

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "two_tower.pt"


# --------------------------------------------------------------------------- validation
SCORE_BLOCK_BYTES = 64 << 20  # validation scores [users, N] per block (2M items x 64 MB: 8 users a block)
USER_BLOCK = 65_536  # users encoded at a time (validation, serving vectors): their histories in memory


@dataclass(frozen=True)
class Validation:
    """P-ML validation: per user, the train history as query and one held-out item as target.

    Attributes:
        seq, starts, lengths: CSR windows of each user's train items (catalogue indices); ``seq``
            in memory, or an example store's file, read one block of users at a time.
        user_rows: ``[U]`` rows in ``FeatureSpace.user_cats``.
        targets: ``[U]`` item index of the validation item (-1 = unknown item).
    """

    seq: Seq
    starts: np.ndarray
    lengths: np.ndarray
    user_rows: np.ndarray
    targets: np.ndarray

    @classmethod
    def build(cls, train: pl.DataFrame, validation: pl.DataFrame, space: FeatureSpace) -> Validation:
        seq, offsets, users = user_sequences(train, space)
        val = pl.DataFrame({"user_id": users}).join(
            validation.select("user_id", "item_id").unique("user_id", keep="last"),
            on="user_id",
            how="inner",
            maintain_order="left",
        )
        pos = (
            pl.DataFrame({"user_id": users, "_u": np.arange(users.len())})
            .join(val.select("user_id"), on="user_id", how="semi", maintain_order="left")["_u"]
            .to_numpy()
        )
        return cls(
            seq,
            offsets[pos],
            np.diff(offsets)[pos],
            space.user_rows(val["user_id"].to_numpy(), val.height),
            space.items.lookup(val["item_id"]),
        )

    def recall(self, net: TwoTowerNet, collate: Collator, k: int) -> float:
        """Recall@k with the user's train items masked (ties count against the target)."""
        if len(self.targets) == 0:
            return float("nan")
        items = encode_items(net, collate, np.arange(len(collate.space.items)))  # [N, D]
        # Users in blocks of scores <= SCORE_BLOCK_BYTES: a dense [U, N] would not fit at 1M items
        # (and their histories are read a block at a time when they are on disk).
        block = max(1, min(USER_BLOCK, SCORE_BLOCK_BYTES // (4 * max(len(items), 1))))
        hits = 0
        for lo in range(0, len(self.targets), block):
            users = slice(lo, lo + block)
            seq, starts = read_windows(self.seq, self.starts[users], self.lengths[users])
            vectors = encode_users(net.user_tower, collate, seq, starts, self.lengths[users], self.user_rows[users])
            hits += self._hits(vectors @ items.T, seq, starts, users, k)
        return hits / len(self.targets)

    def _hits(self, scores: np.ndarray, seq: np.ndarray, starts: np.ndarray, users: slice, k: int) -> int:
        """How many of these users' targets rank in the top k, given their scores ``[B, N]`` and
        their train items' windows ``seq[starts[b] : starts[b] + lengths[b]]``."""
        lengths, targets = self.lengths[users], self.targets[users]
        rows = np.repeat(np.arange(len(starts)), lengths)
        first = np.cumsum(lengths) - lengths
        cols = seq[np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))]
        keep = cols != targets[rows]
        scores[rows[keep], cols[keep]] = -np.inf
        known = targets >= 0
        target_scores = np.where(known, scores[np.arange(len(scores)), np.maximum(targets, 0)], np.inf)
        ranks = (scores >= target_scores[:, None]).sum(axis=1)  # the target counts itself
        return int(np.sum(known & (ranks <= k)))


# --------------------------------------------------------------------------- the loop


def _resumable(config: TwoTowerConfig) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed (epochs may grow: that extends a run)."""
    return config.model_dump(mode="json", exclude={"epochs"})


def _writer(full: dict[str, Any] | None, task: RetrievalTask, history: list[dict[str, Any]], config: TwoTowerConfig):
    """Writes this epoch's checkpoint (``full``: the gathered engine state, rank 0 only)."""
    state = {
        "engine": full,
        "task": {k: v.cpu() for k, v in task.state_dict().items()},
        "epoch": history[-1]["epoch"],
        "history": list(history),
        "config": _resumable(config),
    }
    return lambda out: torch.save(state, out / CHECKPOINT_FILE)


def fit_loop(
    space: FeatureSpace,
    examples: Examples | ExampleSource,
    config: TwoTowerConfig,
    *,
    validation: Validation | None = None,
    ctx: WorkerContext | None = None,
) -> tuple[TwoTowerNet | None, list[dict[str, Any]]]:
    """Train; return (a plain-torch copy of the trained towers on rank 0 / None elsewhere, per-epoch metrics).

    ``examples``: in memory, or an example store's files (read a few blocks at a time,
    recemb.models.two_tower.example_store). ``ctx`` (default: one process, no checkpoints)
    gives the checkpoint to resume from and takes one ``two_tower.pt`` per epoch; rank and
    world size come from the process group.
    """
    source = InMemoryExamples(examples) if isinstance(examples, Examples) else examples
    ctx = ctx or WorkerContext()
    device = torch.device(ctx.device) if ctx.device else resolve_device(config.device, setting="two_tower.device")
    backend = resolve_sparse_backend(config.backend)
    torch.manual_seed(config.seed)  # identical dense initialisation on every rank
    # Only targets train an item's id row; with content, other items are placed by their content.
    id_trained = source.trained_items(len(space.items))
    engine = Engine(
        lambda b, d: build_net(space, config, b, d, id_trained),
        backend,
        device,
        config.lr,
        config.emb_lr,
        config.weight_decay,
    )
    task = RetrievalTask(
        len(space.items),
        config.temperature,
        config.logq,
        config.remove_accidental_hits,
        config.mixed_negatives,
        config.estimator_buckets,
        config.estimator_alpha,
    ).to(device)
    collate = Collator(space)
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = ctx.latest_checkpoint()
    state = None if ckpt is None else torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    if state is not None:
        if state.get("config") != _resumable(config):
            raise RecembError(
                "two_tower: the checkpoint was written with other settings "
                f"({state.get('config')}); delete it or set ray.resume=false to start over"
            )
        engine.load_full_state(state["engine"])
        task.load_state_dict(state["task"])
        start, history = int(state["epoch"]), list(state["history"])
        log.info("two_tower: resumed after epoch %d", start)
    rank, world = engine.rank, engine.world_size
    plan = EpochPlan.of(len(source), world, config.batch_size)
    steps, batch = plan.steps, plan.batch
    plain: TwoTowerNet | None = None
    progress = Progress(
        f"two_tower x{world}" if world > 1 else "two_tower", steps * (config.epochs - start), "step", enabled=rank == 0
    )
    try:
        for epoch in ctx.epochs(start, config.epochs):
            engine.train()
            epoch_seed = config.seed * 1_000_003 + epoch * 7919 + rank
            gen = torch.Generator().manual_seed(epoch_seed)
            # Dropout and modality dropout draw from the global generator: seeding it per
            # epoch makes a resumed run repeat the uninterrupted one exactly.
            torch.manual_seed(epoch_seed)
            t0, total = time.perf_counter(), 0.0
            for s, (window, rows) in enumerate(epoch_batches(source, plan, world, rank, config.seed, epoch)):
                user_feats, targets = collate.examples(window, rows)
                neg = task.sample_negatives(gen).numpy() if task.mixed_negatives else None
                item_idx = targets if neg is None else np.concatenate([targets, neg])
                idx_t = torch.from_numpy(item_idx).to(device)
                u, v = engine.net(user_feats.to(device), collate.items(item_idx).to(device), idx_t)
                b = len(targets)
                loss = task(
                    u, v[:b], idx_t[:b], v[b:] if neg is not None else None, idx_t[b:] if neg is not None else None
                )
                engine.step(loss)
                total += float(loss.detach())
                progress.update(1, epoch=epoch + 1, loss=total / (s + 1))
            seconds = time.perf_counter() - t0
            metrics = {
                "epoch": epoch + 1,
                "loss": total / max(steps, 1),
                "seconds": seconds,
                "samples_per_s": steps * batch * world / max(seconds, 1e-9),
            }
            full = engine.full_state()  # collective: every rank takes part
            if full is not None:  # rank 0: full_state gathers there
                plain = build_plain_net(space, config, full["model"])
                if validation is not None:
                    metrics[f"val_recall@{config.eval_k}"] = validation.recall(plain, collate, config.eval_k)
                ctx.note(
                    progress,
                    f"two_tower epoch {epoch + 1}/{config.epochs}: "
                    + ", ".join(f"{k} {fmt_number(v)}" for k, v in metrics.items() if k != "epoch"),
                )
            history.append(metrics)
            if plain is not None:
                ctx.epoch_done(epoch + 1, partial(tuple, (space, plain, list(history))))
            ctx.report(epoch + 1, metrics, _writer(full, task, history, config))
        if start >= config.epochs:  # resumed after the last epoch: nothing left to train
            full = engine.full_state()  # collective: every rank takes part
            if full is not None:  # rank 0: full_state gathers there
                plain = build_plain_net(space, config, full["model"])
        last = history[-1] if history else {}
        progress.summary = f"{len(history)} epochs" + "".join(
            f", {k} {v:.4f}" for k, v in last.items() if k.startswith(("loss", "val_"))
        )
    except BaseException:
        progress.close(failed=True)
        raise
    finally:
        progress.close()
        engine.close()
    return plain, history


# --------------------------------------------------------------------------- fit / train_loop / driver


@dataclass
class FittedTwoTower:
    """What :func:`fit_two_tower` returns: the feature space, plain towers (None off rank 0), history."""

    space: FeatureSpace
    net: TwoTowerNet | None
    history: list[dict[str, Any]]
    examples: int


def _training_examples(train: pl.DataFrame, space: FeatureSpace) -> Examples:
    """The examples of ``train``; fewer than 2 is an error that says what to change."""
    examples = build_examples(train, space)
    if len(examples) < 2:
        raise DataValidationError(
            f"two-tower: only {len(examples)} training example(s); users need more than "
            f"two_tower.min_history = {space.config.min_history} events"
        )
    return examples


def fit_two_tower(
    config: TwoTowerConfig,
    events: pl.DataFrame,
    items: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    catalogue: Vocab | None = None,
    validation: pl.DataFrame | None = None,
    *,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    ctx: WorkerContext | None = None,
) -> FittedTwoTower:
    """Features from canonical tables, then :func:`fit_loop` (arguments as ``TwoTower.fit``)."""
    if events.height == 0:
        raise DataValidationError("TwoTower.fit: the events table is empty; nothing to train on")
    vocab = catalogue if catalogue is not None else item_vocab(events, items)
    space = FeatureSpace(vocab, config, items, users, root, cache_dir)
    examples = _training_examples(events, space)
    val = Validation.build(events, validation, space) if validation is not None else None
    net, history = fit_loop(space, examples, config, validation=val, ctx=ctx)
    return FittedTwoTower(space, net, history, len(examples))


def prepare_examples(config: dict[str, Any]) -> dict[str, Any]:
    """Events -> an example store (recemb.models.two_tower.example_store); run in a child process.

    ``config`` as :func:`train_loop`'s, plus ``store`` (where to write it) and
    ``events_sha256``. The events, their split and the features are built
    here and gone with the process, so no training process holds them.
    Returns the store's ``store.json``.
    """
    from recemb.data.dataset import load_dataset
    from recemb.data.splits import leave_last_out

    section = TwoTowerConfig.model_validate(config["two_tower"])
    ds = load_dataset(config["data_dir"])
    split = leave_last_out(ds.events)
    space = FeatureSpace(item_vocab(ds.events, ds.items), section, ds.items, ds.users, ds.root, config.get("cache_dir"))
    examples = _training_examples(split.train, space)
    val = Validation.build(split.train, split.validation, space)
    # Users' vectors for serving come from all their events; the tower reads the latest history_length.
    seq, offsets, users = user_sequences(ds.events, space)
    keep = np.minimum(np.diff(offsets), section.history_length)
    serving = (gather_windows(seq, offsets[1:] - keep, keep), np.concatenate([[0], np.cumsum(keep)]), users.to_numpy())
    validation = {field: getattr(val, field) for field in VALIDATION_FIELDS}  # built in memory here
    meta = {"events_sha256": config["events_sha256"], "settings": _resumable(section)}
    write_store(Path(config["store"]), examples, validation, serving, space.items, meta)
    return Store.open(config["store"]).meta


def _side_tables(data_dir: Path) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """The items and users tables of a prepared dataset (the events are not read)."""
    from recemb.data import schema

    def table(name: str) -> pl.DataFrame | None:
        path = data_dir / f"{name}.parquet"
        return schema.read_table(path, name) if path.is_file() else None

    return table("items"), table("users")


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train and export one two-tower model; runs as-is in-process or in a Ray Train worker.

    ``config`` keys: ``two_tower`` (the section as a dict), ``data_dir``
    (prepared canonical tables: only items and users are read here),
    ``store`` (the example store :func:`prepare_examples` wrote), ``out_dir``
    (``<run>/two_tower``), ``cache_dir`` (frozen content features), and the
    runner's own keys (checkpoints, threads). A worker reads its examples a
    few blocks at a time, so its memory does not grow with the events.
    Returns the metrics dict on rank 0 (None elsewhere).
    """
    ctx = worker_context(config)
    section = TwoTowerConfig.model_validate(config["two_tower"])
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    t0 = time.perf_counter()
    data_dir = Path(config["data_dir"])
    store = Store.open(config["store"])
    items, users = _side_tables(data_dir)
    space = FeatureSpace(store.items(), section, items, users, data_dir, config.get("cache_dir"))
    val = Validation(**store.validation_arrays()) if ctx.rank == 0 else None
    examples = store.examples()
    net, history = fit_loop(space, examples, section, validation=val, ctx=ctx)
    if net is None:
        return None
    out = Path(config["out_dir"])
    item_embedding_set(net, space, history).save(out / "embeddings")
    write_serving_vectors(net, space, store, out / "user_embeddings")
    save_user_tower(net.user_tower, space, out / "user_tower")
    metrics = {
        "train_seconds": time.perf_counter() - t0,
        "examples": len(examples),
        "items": len(space.items),
        "backend": resolve_sparse_backend(section.backend),
        # this process's peak resident memory (Linux reports KiB): flat in the event count
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "epochs": history,
    }
    if space.content is not None:
        metrics["content_coverage"] = space.content.coverage()
    write_json(out / "metrics.json", metrics)
    return metrics


def write_serving_vectors(net: TwoTowerNet, space: FeatureSpace, store: Store, out_dir: Path) -> Path:
    """Every user's ``[U, D]`` serving vector from the store's latest histories, encoded and written a
    block of users at a time (``out_dir``: an EmbeddingSet of kind ``two_tower_users``): never all in memory."""
    seq, offsets, users = store.serving_histories()
    rows = space.user_rows(users.to_numpy(), len(users))
    collate = Collator(space)

    def blocks() -> Iterator[np.ndarray]:
        for lo in range(0, len(users), USER_BLOCK):
            block = slice(lo, min(lo + USER_BLOCK, len(users)))
            lengths = np.diff(offsets[block.start : block.stop + 1])
            values, starts = read_windows(seq, offsets[block], lengths)
            yield encode_users(net.user_tower, collate, values, starts, lengths, rows[block])

    return write_embedding_set_blocks(out_dir, users, net.user_tower.out_dim, blocks(), **user_set_meta(space))


def _store_meta(root: Path) -> dict[str, Any]:
    return Store.open(root).meta


def ensure_example_store(loop_config: dict[str, Any], store: Path) -> Path:
    """Prepare ``store`` in a child process unless it already holds these events' examples for these settings."""
    settings = _resumable(TwoTowerConfig.model_validate(loop_config["two_tower"]))
    t0 = time.perf_counter()
    data_dir = Path(loop_config["data_dir"])
    meta, reused = ensure_prepared(store, data_dir, settings, _store_meta, prepare_examples, loop_config)
    if reused:
        log.info("two_tower: reusing the example store %s", store)
    else:
        seconds = time.perf_counter() - t0
        log.info("two_tower: %s examples prepared in %.1fs (%s)", fmt_number(meta["examples"]), seconds, store)
    return store


def train_two_tower(
    section: TwoTowerConfig,
    ray: RayTrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    cache_dir: str | Path | None = None,
) -> Path:
    """The ``train two-tower`` stage: ``data_dir``'s prepared tables -> ``<run_dir>/two_tower``.

    Args:
        section: the ``two_tower:`` section.
        ray: the ``ray:`` section. ``workers = 0``: in this process; ``N``: N Ray
            ``TorchTrainer`` workers (DMP-sharded tables). Checkpoints under
            ``<storage>/<name or "two_tower">`` either way; ``resume: false`` discards old ones.
        data_dir: the prepared canonical tables.
        run_dir: the run's output directory.
        cache_dir: where frozen image / sentence features are cached.
    """
    if not (Path(data_dir) / "events.parquet").is_file():
        # Fail here, not as a traceback from inside a Ray worker.
        raise DataValidationError(
            f"{data_dir}: no prepared dataset; run `recemb pipeline CONFIG` (its data stage) "
            f"or `recemb data prepare NAME --out {data_dir}` first"
        )
    out = Path(run_dir) / "two_tower"
    loop_config = {
        "two_tower": section.model_dump(mode="json"),
        "data_dir": str(Path(data_dir).resolve()),
        "out_dir": str(out.resolve()),
        "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None,
    }
    experiment = experiment_dir(ray, run_dir, "two_tower")
    # Beside the checkpoints, not among them: ray.resume=false discards those, not the examples.
    store = ensure_example_store(loop_config, experiment.with_name(f"{experiment.name}.examples").resolve())
    run_training(train_loop, {**loop_config, "store": str(store)}, ray, experiment)
    return out
