"""Two-tower training: the epoch loop, checkpoints, per-epoch validation, Ray Train.

- :func:`fit_loop`: one process's loop (rank r of W trains on its 1/W of
  each epoch's shuffled examples; W = 1 in-process). Fused RowWiseAdagrad
  for tables + Adam for dense layers under DistributedModelParallel
  (recemb.models.two_tower.distributed). After each epoch the unsharded
  state is gathered to rank 0, which measures validation Recall@K and
  writes a checkpoint; a restart resumes from the last one.
- :func:`train_loop`: ``train_loop(config: dict)``, the same function in
  one process and in each Ray ``TorchTrainer`` worker: loads the prepared
  dataset, splits it leave-last-out (trains on train, validates on the
  validation item), and on rank 0 exports ``embeddings/``,
  ``user_embeddings/``, ``user_tower/`` and ``metrics.json``.

With W > 1 in-batch negatives are each rank's local batch (no all-gather).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recemb.errors import DataValidationError, RecembError
from recemb.io import atomic_path, write_json
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.models.two_tower.distributed import Engine, resolve_backend, resolve_device
from recemb.models.two_tower.features import Collator, Examples, FeatureSpace, user_sequences
from recemb.models.two_tower.model import build_plain_net, encode_items, encode_users
from recemb.models.two_tower.task import RetrievalTask
from recemb.models.two_tower.towers import TwoTowerNet, build_net
from recemb.progress import Progress, fmt_number

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "two_tower.pt"


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Validation:
    """P-ML validation: per user, the train history as query and one held-out item as target.

    Attributes:
        seq, starts, lengths: CSR windows of each user's train items (catalogue indices).
        user_rows: ``[U]`` rows in ``FeatureSpace.user_cats``.
        targets: ``[U]`` item index of the validation item (-1 = unknown item).
    """

    seq: np.ndarray
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
        items = encode_items(net, collate, np.arange(len(collate.space.items)))
        users = encode_users(net.user_tower, collate, self.seq, self.starts, self.lengths, self.user_rows)
        scores = users @ items.T  # [U, N]
        rows = np.repeat(np.arange(len(self.starts)), self.lengths)
        first = np.cumsum(self.lengths) - self.lengths
        cols = self.seq[np.repeat(self.starts - first, self.lengths) + np.arange(int(self.lengths.sum()))]
        keep = cols != self.targets[rows]
        scores[rows[keep], cols[keep]] = -np.inf
        known = self.targets >= 0
        target_scores = np.where(known, scores[np.arange(len(scores)), np.maximum(self.targets, 0)], np.inf)
        ranks = (scores >= target_scores[:, None]).sum(axis=1)  # the target counts itself
        return float(np.mean(known & (ranks <= k)))


# --------------------------------------------------------------------------- checkpoints


class LocalCheckpoints:
    """One checkpoint file in a directory, replaced atomically each epoch."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / CHECKPOINT_FILE

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        if state is None:  # not rank 0
            return
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


class RayCheckpoints:
    """Ray Train checkpoints: rank 0 reports each epoch's state, a restart gets the latest back."""

    def load(self) -> dict[str, Any] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


# --------------------------------------------------------------------------- the loop


def _steps(n_examples: int, world: int, batch: int) -> tuple[int, int]:
    """``(examples per rank, steps per epoch)``: equal on every rank (sharded lookups need it)."""
    per_rank = n_examples // world
    return per_rank, max(per_rank // batch, 1 if per_rank >= 2 else 0)


def _resumable(config: TwoTowerConfig) -> dict[str, Any]:
    """The settings a checkpoint must share to be resumed (epochs may grow: that extends a run)."""
    return config.model_dump(mode="json", exclude={"epochs"})


def fit_loop(
    space: FeatureSpace,
    examples: Examples,
    config: TwoTowerConfig,
    *,
    validation: Validation | None = None,
    checkpoints=None,
) -> tuple[TwoTowerNet | None, list[dict[str, Any]]]:
    """Train; return (a plain-torch copy of the trained towers on rank 0 / None elsewhere, per-epoch metrics)."""
    device = resolve_device(config.device)
    backend = resolve_backend(config.backend)
    torch.manual_seed(config.seed)  # identical dense initialisation on every rank
    # Only targets train an item's id row; with content, other items are placed by their content.
    id_trained = np.zeros(len(space.items), dtype=bool)
    id_trained[examples.target] = True
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
    state = checkpoints.load() if checkpoints is not None else None
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
    per_rank, steps = _steps(len(examples), world, config.batch_size)
    batch = min(config.batch_size, per_rank)
    plain: TwoTowerNet | None = None
    progress = Progress(
        f"two_tower x{world}" if world > 1 else "two_tower", steps * (config.epochs - start), "step", enabled=rank == 0
    )
    try:
        for epoch in range(start, config.epochs):
            engine.train()
            order = np.random.default_rng([config.seed, epoch]).permutation(len(examples))
            mine = order[rank * per_rank : (rank + 1) * per_rank]
            epoch_seed = config.seed * 1_000_003 + epoch * 7919 + rank
            gen = torch.Generator().manual_seed(epoch_seed)
            # Dropout and modality dropout draw from the global generator: seeding it per
            # epoch makes a resumed run repeat the uninterrupted one exactly.
            torch.manual_seed(epoch_seed)
            t0, total = time.perf_counter(), 0.0
            for s in range(steps):
                rows = mine[s * batch : (s + 1) * batch]
                user_feats, targets = collate.examples(examples, rows)
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
            if rank == 0:
                plain = build_plain_net(space, config, full["model"])
                if validation is not None:
                    metrics[f"val_recall@{config.eval_k}"] = validation.recall(plain, collate, config.eval_k)
                progress.note(
                    f"two_tower epoch {epoch + 1}/{config.epochs}: "
                    + ", ".join(f"{k} {fmt_number(v)}" for k, v in metrics.items() if k != "epoch")
                )
            history.append(metrics)
            if checkpoints is not None:
                state = (
                    None
                    if full is None
                    else {
                        "engine": full,
                        "task": {k: v.cpu() for k, v in task.state_dict().items()},
                        "epoch": epoch + 1,
                        "history": history,
                        "config": _resumable(config),
                    }
                )
                checkpoints.save(state, metrics)
        if start >= config.epochs:  # resumed after the last epoch: nothing left to train
            full = engine.full_state()  # collective: every rank takes part
            if rank == 0:
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


# --------------------------------------------------------------------------- train_loop / stage


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train and export one two-tower model; runs as-is in-process or in a Ray Train worker.

    ``config`` keys: ``two_tower`` (the section as a dict), ``data_dir``
    (prepared canonical tables), ``out_dir`` (``<run>/two_tower``),
    ``checkpoint_dir`` (in-process checkpoints; ignored under Ray, which
    keeps its own), ``cache_dir`` (frozen content features), ``ray`` (True
    inside a TorchTrainer). Every worker builds its own features, content
    included, from ``data_dir``: nothing large travels in the config.
    Returns the metrics dict on rank 0 (None elsewhere).
    """
    from recemb.data.dataset import load_dataset
    from recemb.data.splits import leave_last_out
    from recemb.models.two_tower.features import build_examples, item_vocab
    from recemb.models.two_tower.model import TwoTower, save_user_tower

    section = TwoTowerConfig.model_validate(config["two_tower"])
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    ds = load_dataset(config["data_dir"])
    split = leave_last_out(ds.events)
    model = TwoTower(section)
    model.space = FeatureSpace(
        item_vocab(ds.events, ds.items), section, ds.items, ds.users, ds.root, config.get("cache_dir")
    )
    model.collate = Collator(model.space)
    examples = build_examples(split.train, model.space)
    validation = Validation.build(split.train, split.validation, model.space)
    if config.get("ray"):
        checkpoints = RayCheckpoints()
    elif config.get("checkpoint_dir"):
        checkpoints = LocalCheckpoints(config["checkpoint_dir"])
    else:
        checkpoints = None
    t0 = time.perf_counter()
    model.net, model.history = fit_loop(model.space, examples, section, validation=validation, checkpoints=checkpoints)
    if model.net is None:
        return None
    out = Path(config["out_dir"])
    items = model.item_embeddings()
    items.save(out / "embeddings")
    # Users from all their events: the latest history is the best query for serving.
    model.user_embeddings(ds.events).save(out / "user_embeddings")
    save_user_tower(model.net.user_tower, model.space, out / "user_tower")
    metrics = {
        "train_seconds": time.perf_counter() - t0,
        "examples": len(examples),
        "items": len(model.space.items),
        "backend": resolve_backend(section.backend),
        "epochs": model.history,
    }
    if model.space.content is not None:
        metrics["content_coverage"] = model.space.content.coverage()
    write_json(out / "metrics.json", metrics)
    return metrics


def run_two_tower(cfg, section: TwoTowerConfig | None = None, ray=None) -> Path:
    """The ``train two-tower`` stage: ``cfg.prepared_dir`` -> ``<run>/two_tower``.

    Args:
        cfg: the PipelineConfig.
        section: the ``two_tower:`` section (default ``cfg.two_tower``).
        ray: a :class:`~recemb.train.ray_config.RayTrainConfig` (default
            ``cfg.ray``). With ``workers`` >= 1 the loop runs in a Ray
            ``TorchTrainer`` (Ray is joined or started through recemb.ray_runtime);
            checkpoints under ``<storage>/<name or "two_tower">``, else in
            ``<run>/two_tower/checkpoint``. ``resume: false`` discards old ones.
    """
    section = section or cfg.two_tower
    ray = ray or cfg.ray
    if not (Path(cfg.prepared_dir) / "events.parquet").is_file():
        # Fail here, not as a traceback from inside a Ray worker.
        raise DataValidationError(
            f"{cfg.prepared_dir}: no prepared dataset; run `recemb pipeline CONFIG` (its data stage) "
            f"or `recemb data prepare NAME --out {cfg.prepared_dir}` first"
        )
    out = cfg.run_dir / "two_tower"
    name = ray.name or "two_tower"
    storage = ray.storage(cfg.run_dir)
    local_ckpt = (out / "checkpoint").resolve()
    if not ray.resume:
        for old in (storage / name, local_ckpt):
            if old.exists():
                log.info("two_tower: ray.resume=false, discarding %s", old)
                shutil.rmtree(old)
    loop_cfg = {
        "two_tower": section.model_dump(mode="json"),
        "data_dir": str(Path(cfg.prepared_dir).resolve()),
        "out_dir": str(out.resolve()),
        "checkpoint_dir": str(local_ckpt),
        "cache_dir": str(cfg.content_cache_dir(section.content).resolve()),
        "threads": ray.threads() if ray.workers else 0,
    }
    if ray.workers < 1:
        train_loop(loop_cfg)
        return out
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recemb.ray_runtime import ray_session

    with ray_session():
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={**loop_cfg, "ray": True},
            scaling_config=ScalingConfig(
                num_workers=ray.workers, use_gpu=ray.use_gpu, resources_per_worker={"CPU": ray.cpus_per_worker}
            ),
            torch_config=TorchConfig(backend="nccl" if ray.use_gpu else "gloo"),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=ray.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=ray.keep_checkpoints),
            ),
        )
        result = trainer.fit()
    if result.error:
        raise result.error
    return out
