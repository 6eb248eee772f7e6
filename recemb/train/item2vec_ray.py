"""Item2vec as a Ray Train job: data-parallel over session shards, a checkpoint per epoch, resume.

Two halves:

- :func:`train_loop` (``config: dict``) runs on every worker, unchanged
  in-process (``ray.workers = 0``: no Ray at all) and inside
  ``ray.train.torch.TorchTrainer``. Worker ``r`` of ``W`` trains the CPU
  (numba Hogwild) or torch kernel on the ``r``-th of ``W`` contiguous,
  event-balanced shards of the session corpus, and the shared tables are
  synchronised ``syncs_per_epoch`` times per epoch (see *Synchronisation*).
  Rank 0 writes a checkpoint after every epoch; a (re)started loop resumes
  from the newest one at the next epoch, with the same LR schedule.
- :func:`train_item2vec_ray` (the driver) builds the corpus once, writes
  it beside the checkpoints for the workers to memory-map, launches the
  loop, and writes ``<run>/item2vec/embeddings`` (EmbeddingSet), the
  word2vec text file and ``metrics.json`` from the last checkpoint.

Synchronisation (measured in ``benchmarks/item2vec_sync.py``): between
syncs every worker trains its own copy of ``syn0`` / ``syn1`` ``[V, D]``;
a sync all-reduces each worker's change since the last sync (gloo on CPU,
NCCL on CUDA) and applies the *mean* (``sync="mean"``: parameter averaging)
or the *sum* (``sync="sum"``: every worker's updates kept, as if the
shards had been trained one after another on stale reads - Hogwild
across processes). Per-step gradient sync (DDP) is the limit of many
syncs per epoch; its traffic is a dense ``[V, D]`` all-reduce per step.
Default: ``mean``, once per epoch. Measured on Yoochoose-100k (2 workers,
10 epochs, 2 seeds): Recall@20 0.5733 / 0.5762 vs 0.5767 / 0.5803 for one
process (sum: 0.5665 / 0.5672), while per-step sync ran at 0.16-0.20x the
events/s of one worker (the all-reduce, not the kernel, dominates).

Checkpoint directory (no pickles; readable with numpy and pyarrow)::

    checkpoint_epoch_0003/
      syn0.npy, syn1.npy   [V, D] float32 input / output vectors
      vocab.parquet        id, index, count (recemb.data.vocab.Vocab)
      state.json           epoch done, item2vec config, corpus sha256, per-epoch history
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, RecembError
from recemb.io import atomic_dir, write_json
from recemb.models.item2vec.config import Item2VecConfig
from recemb.progress import Progress
from recemb.train.ray_config import RayTrainConfig

log = logging.getLogger("recemb.item2vec")

SCHEMA_VERSION = 1
CKPT_PREFIX = "checkpoint_epoch_"
SYNC_MODES = ("mean", "sum")
# Settings that change what a checkpoint's vectors mean; a checkpoint trained
# with other values is not resumed. (epochs may grow: that is how a run is extended.)
_MODEL_KEYS = (
    "mode",
    "dim",
    "window",
    "shrink_windows",
    "negatives",
    "ns_exponent",
    "shared_negatives",
    "sample",
    "min_count",
    "alpha",
    "min_alpha",
    "seed",
)


# ----------------------------------------------------------------- corpus files
def write_corpus(corpus, out_dir: Path) -> str:
    """Save a :class:`~recemb.models.item2vec.corpus.Corpus` for the workers; return its sha256.

    ``indptr.npy`` ``[S+1]`` int64, ``indices.npy`` ``[E]`` int32, ``vocab.parquet``.
    """
    digest = corpus_digest(corpus.indptr, corpus.indices, corpus.vocab)
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "indptr.npy", corpus.indptr)
        np.save(tmp / "indices.npy", corpus.indices)
        corpus.vocab.save(tmp / "vocab.parquet")
        write_json(tmp / "corpus.json", {"sha256": digest, "dropped": corpus.dropped})
    return digest


def corpus_digest(indptr: np.ndarray, indices: np.ndarray, vocab: Vocab) -> str:
    """sha256 over the sessions and the item ids: a checkpoint resumes only on the same corpus."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(indices, dtype=np.int32).tobytes())
    h.update("\n".join(vocab.ids.tolist()).encode())
    return h.hexdigest()


@dataclass
class _Shard:
    vocab: Vocab
    indptr: np.ndarray  # [S_r + 1] int64, rebased to 0
    indices: np.ndarray  # [E_r] int32
    n_events_total: int
    digest: str


def _load_shard(corpus_dir: Path, rank: int, world: int) -> _Shard:
    from recemb.models.item2vec.sgns_cpu import shard_bounds

    indptr = np.load(corpus_dir / "indptr.npy", mmap_mode="r")
    indices = np.load(corpus_dir / "indices.npy", mmap_mode="r")
    meta = json.loads((corpus_dir / "corpus.json").read_text())
    bounds = shard_bounds(np.asarray(indptr), world)
    s0, s1 = int(bounds[rank]), int(bounds[rank + 1])
    e0, e1 = int(indptr[s0]), int(indptr[s1])
    return _Shard(
        vocab=Vocab.load(corpus_dir / "vocab.parquet"),
        indptr=np.asarray(indptr[s0 : s1 + 1], dtype=np.int64) - e0,
        indices=np.ascontiguousarray(indices[e0:e1], dtype=np.int32),
        n_events_total=int(indptr[-1]),
        digest=meta["sha256"],
    )


# ----------------------------------------------------------------- checkpoints
def save_checkpoint(out: Path, syn0: np.ndarray, syn1: np.ndarray, vocab: Vocab, state: dict[str, Any]) -> None:
    """Write one checkpoint directory (see the module docstring) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "syn0.npy", np.ascontiguousarray(syn0, dtype=np.float32))
    np.save(out / "syn1.npy", np.ascontiguousarray(syn1, dtype=np.float32))
    vocab.save(out / "vocab.parquet")
    write_json(out / "state.json", {"schema_version": SCHEMA_VERSION, **state})


def load_checkpoint(path: Path) -> tuple[np.ndarray, np.ndarray, Vocab, dict[str, Any]]:
    """``(syn0, syn1, vocab, state)`` of a checkpoint directory; clear error if it is not one."""
    path = Path(path)
    missing = [f for f in ("syn0.npy", "syn1.npy", "vocab.parquet", "state.json") if not (path / f).exists()]
    if missing:
        raise RecembError(f"{path}: not an item2vec checkpoint (missing {missing}); delete it or set ray.resume=false")
    state = json.loads((path / "state.json").read_text())
    if state.get("schema_version") != SCHEMA_VERSION:
        raise RecembError(
            f"{path}: checkpoint schema {state.get('schema_version')} != {SCHEMA_VERSION}; "
            "retrain with ray.resume=false"
        )
    syn0 = np.load(path / "syn0.npy", allow_pickle=False)
    syn1 = np.load(path / "syn1.npy", allow_pickle=False)
    return syn0, syn1, Vocab.load(path / "vocab.parquet"), state


def latest_checkpoint(experiment_dir: Path) -> Path | None:
    """The checkpoint with the most epochs done under ``experiment_dir`` (either run mode), or None."""
    best, best_epoch = None, -1
    for d in Path(experiment_dir).glob(f"{CKPT_PREFIX}*"):
        try:
            epoch = json.loads((d / "state.json").read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            continue  # a checkpoint being written, or a foreign directory
        if epoch > best_epoch:
            best, best_epoch = d, epoch
    return best


def resumable(state: dict[str, Any], cfg: Item2VecConfig, digest: str) -> str | None:
    """Why a checkpoint's ``state`` cannot continue training ``cfg`` on corpus ``digest`` (None if it can)."""
    if state.get("corpus_sha256") != digest:
        return "it was trained on a different corpus (the events or min_count changed)"
    old = state.get("config", {})
    diff = [f"{k}={old.get(k)!r} (now {getattr(cfg, k)!r})" for k in _MODEL_KEYS if old.get(k) != getattr(cfg, k)]
    if diff:
        return "it was trained with " + ", ".join(diff)
    return None


# ----------------------------------------------------------------- sessions
class _LocalSession:
    """``workers = 0``: one process, checkpoints written straight to the experiment directory."""

    rank, world = 0, 1

    def __init__(self, experiment_dir: Path, keep: int):
        self.dir, self.keep = Path(experiment_dir), keep

    def checkpoint_dir(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def report(self, metrics: dict[str, Any], write) -> None:
        with atomic_dir(self.dir / f"{CKPT_PREFIX}{metrics['epoch']:04d}") as tmp:
            write(tmp)
        done = sorted(self.dir.glob(f"{CKPT_PREFIX}*"))
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


class _RaySession:
    """Inside a TorchTrainer worker: ranks from the train context, checkpoints through ``ray.train.report``."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self._ckpt = ray.train.get_checkpoint()
        self._tmp: tempfile.TemporaryDirectory | None = None

    def checkpoint_dir(self) -> Path | None:
        if self._ckpt is None:
            return None
        # as_directory() downloads remote storage; local storage is used in place.
        self._tmp = tempfile.TemporaryDirectory(prefix="recemb-ckpt-")
        return Path(self._ckpt.to_directory(self._tmp.name))

    def report(self, metrics: dict[str, Any], write) -> None:
        import ray.train

        name = f"{CKPT_PREFIX}{metrics['epoch']:04d}"
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        with tempfile.TemporaryDirectory(prefix="recemb-ckpt-") as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def _in_ray_train_worker() -> bool:
    if "ray.train" not in sys.modules:  # a Ray Train worker has always imported it
        return False
    import ray.train

    try:
        ray.train.get_context()
        return True
    except RuntimeError:
        return False


# ----------------------------------------------------------------- the loop
def shard_seed(seed: int, epoch: int, rank: int, chunk: int) -> int:
    """RNG seed of one (epoch, worker, chunk) pass; rank 0's first chunk replays the one-process stream."""
    from recemb.models.item2vec.model import _epoch_seed

    if rank == 0 and chunk == 0:
        return _epoch_seed(seed, epoch)
    return int(np.random.SeedSequence([seed, epoch, rank, chunk]).generate_state(1)[0])


class _Sync:
    """All-reduce of each worker's change to the tables since the last sync (see module docstring)."""

    def __init__(self, tensors, world: int, mode: str):
        self.tensors, self.world, self.mode = tensors, world, mode
        self.base = [t.clone() for t in tensors] if world > 1 else []

    def __call__(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        scale = 1.0 / self.world if self.mode == "mean" else 1.0
        for t, base in zip(self.tensors, self.base):
            delta = t - base
            dist.all_reduce(delta, op=dist.ReduceOp.SUM)
            t.copy_(base.add_(delta, alpha=scale))


def _allreduce_sums(values: list[float], world: int, device) -> list[float]:
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def train_loop(config: dict[str, Any]) -> None:
    """Train item2vec on this worker's shard; checkpoint every epoch (rank 0); resume from the newest.

    ``config`` (JSON-like, built by :func:`train_item2vec_ray`):
        item2vec: ``Item2VecConfig`` fields; corpus_dir: :func:`write_corpus` output;
        experiment_dir, keep_checkpoints: used in-process only (Ray owns storage otherwise);
        sync ("mean" | "sum"), syncs_per_epoch (>= 1); threads: compute threads per worker;
        use_gpu: run the torch kernel on this worker's GPU;
        fail_at_epoch / fault_marker: test hook - raise once before that (1-based) epoch.
    """
    from recemb.models.item2vec.model import EpochRunner, lr_range
    from recemb.models.item2vec.sgns_cpu import shard_bounds

    session = (
        _RaySession()
        if _in_ray_train_worker()
        else _LocalSession(Path(config["experiment_dir"]), config.get("keep_checkpoints", 2))
    )
    rank, world = session.rank, session.world
    i2v = dict(config["item2vec"])
    if config.get("threads"):
        i2v["threads"] = int(config["threads"])
    if config.get("use_gpu"):
        import ray.train.torch

        i2v["device"] = str(ray.train.torch.get_device())
        i2v["backend"] = "torch"
    cfg = Item2VecConfig.model_validate(i2v)
    shard = _load_shard(Path(config["corpus_dir"]), rank, world)

    start, history, syn0, syn1 = 0, [], None, None
    ckpt = session.checkpoint_dir()
    if ckpt is not None:
        syn0, syn1, vocab, state = load_checkpoint(ckpt)
        why = resumable(state, cfg, shard.digest)
        if why or vocab.ids.tolist() != shard.vocab.ids.tolist():
            raise RecembError(f"checkpoint {ckpt} cannot be resumed: {why or 'its vocabulary differs'}")
        start, history = int(state["epoch"]), list(state["history"])
        if rank == 0:
            log.info("item2vec: resuming from %s at epoch %d/%d", ckpt.name, start + 1, cfg.epochs)
    runner = EpochRunner(cfg, shard.vocab.counts, syn0, syn1)
    sync = _Sync(runner.tensors(), world, config.get("sync", "mean"))
    n_chunks = int(config.get("syncs_per_epoch", 1))
    chunks = shard_bounds(shard.indptr, n_chunks)
    device = runner.tensors()[0].device

    if runner.backend == "numba":
        # Load the compiled kernel (numba's disk cache) now, so that epoch 1's timing is training only.
        runner.run(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32), cfg.alpha, cfg.alpha, 0)
    started = time.perf_counter()
    label = f"item2vec x{world}" if world > 1 else "item2vec"
    with Progress(label, cfg.epochs - start, "epoch", enabled=rank == 0) as progress:
        for epoch in range(start, cfg.epochs):
            _maybe_fail(config, epoch, rank, world)
            a0, a1 = lr_range(cfg, epoch)
            t0 = time.perf_counter()
            loss = pairs = sync_s = 0.0
            for j in range(n_chunks):
                s0, s1 = int(chunks[j]), int(chunks[j + 1])
                if s1 > s0:  # an empty chunk still takes part in the sync below
                    e0 = int(shard.indptr[s0])
                    chunk_loss, chunk_pairs = runner.run(
                        shard.indptr[s0 : s1 + 1] - e0,
                        shard.indices[e0 : int(shard.indptr[s1])],
                        a0 + (a1 - a0) * j / n_chunks,
                        a0 + (a1 - a0) * (j + 1) / n_chunks,
                        shard_seed(cfg.seed, epoch, rank, j),
                    )
                    loss, pairs = loss + chunk_loss, pairs + chunk_pairs
                ts = time.perf_counter()
                sync()
                sync_s += time.perf_counter() - ts
            loss, pairs, sync_s = _allreduce_sums([loss, pairs, sync_s], world, device)
            secs = max(time.perf_counter() - t0, 1e-9)
            row = {
                "epoch": epoch + 1,
                "loss": loss / max(pairs, 1),
                "pairs": int(pairs),
                "seconds": secs,
                "pairs_per_s": pairs / secs,
                "events_per_s": shard.n_events_total / secs,
                "sync_seconds": sync_s / world,
                "alpha": a1,
                "workers": world,
                "started_at_epoch": start,
            }
            history.append(row)
            if rank == 0:
                eta = (time.perf_counter() - started) / (epoch + 1 - start) * (cfg.epochs - epoch - 1)
                _progress(
                    config,
                    progress,
                    (
                        f"item2vec x{world} epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} "
                        f"pairs/s {row['pairs_per_s']:,.0f} events/s {row['events_per_s']:,.0f} "
                        f"sync {row['sync_seconds']:.2f}s ETA {eta:.1f}s"
                    ),
                )
            state = {
                "epoch": epoch + 1,
                "config": cfg.model_dump(mode="json"),
                "corpus_sha256": shard.digest,
                "history": history,
                "workers": world,
                "sync": config.get("sync", "mean"),
                "syncs_per_epoch": n_chunks,
            }

            def write(out: Path, state=state) -> None:
                s0_, s1_ = runner.arrays()
                save_checkpoint(out, s0_, s1_, shard.vocab, state)

            session.report({k: row[k] for k in ("epoch", "loss", "pairs_per_s", "events_per_s")}, write)
            progress.update(1, loss=row["loss"])
        if history:
            progress.summary = f"loss {history[-1]['loss']:.4f}, {history[-1]['events_per_s']:,.0f} events/s"


def _progress(config: dict[str, Any], progress: Progress, line: str) -> None:
    """Show the epoch line, and append it to the progress file the driver follows (worker logs
    are not forwarded to a locally started driver)."""
    progress.note(line)
    path = config.get("progress_file")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class _FollowProgress:
    """``with _FollowProgress(path):`` - a driver thread that logs each new line of the progress file."""

    def __init__(self, path: Path, interval_s: float = 0.5):
        self.path, self.interval_s = Path(path), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="item2vec-progress", daemon=True)

    def __enter__(self) -> _FollowProgress:
        self.path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        offset = 0
        while True:
            stopping = self._stop.wait(self.interval_s)
            if self.path.exists():
                with open(self.path, encoding="utf-8") as f:
                    f.seek(offset)
                    for line in f:
                        if line.endswith("\n"):
                            log.info("%s", line.rstrip())
                            offset += len(line.encode())
            if stopping:
                return


def _maybe_fail(config: dict[str, Any], epoch: int, rank: int, world: int) -> None:
    """Fault injection for tests: the last rank raises once, before 1-based epoch ``fail_at_epoch``."""
    at = config.get("fail_at_epoch")
    if not at or epoch + 1 != at or rank != world - 1:
        return
    marker = Path(config["fault_marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"injected before epoch {at}\n")
    raise RuntimeError(f"injected fault (fail_at_epoch={at}) on rank {rank}")


# ----------------------------------------------------------------- the driver
def train_item2vec_ray(
    cfg,
    ray_cfg: RayTrainConfig | None = None,
    item2vec: Item2VecConfig | None = None,
    sync: str = "mean",
    syncs_per_epoch: int = 1,
    fail_at_epoch: int | None = None,
) -> Path:
    """Train item2vec on ``cfg.prepared_dir``'s events through :func:`train_loop`; return ``<run>/item2vec``.

    Args:
        cfg: the PipelineConfig (run and data sections are read).
        ray_cfg: execution settings (default ``cfg.ray``, else in-process).
        item2vec: model settings (default ``cfg.item2vec``).
        sync, syncs_per_epoch: table synchronisation between workers (module docstring).
        fail_at_epoch: test hook - one worker raises once before this epoch.
    """
    from recemb.data.dataset import load_dataset
    from recemb.models.item2vec.corpus import build_corpus

    ray_cfg = ray_cfg or getattr(cfg, "ray", None) or RayTrainConfig()
    i2v = item2vec or cfg.item2vec
    out = cfg.run_dir / "item2vec"
    corpus = build_corpus(load_dataset(cfg.prepared_dir).events, min_count=i2v.min_count)
    model, last = fit_corpus(
        corpus,
        i2v,
        ray_cfg,
        ray_cfg.storage(cfg.run_dir),
        sync=sync,
        syncs_per_epoch=syncs_per_epoch,
        fail_at_epoch=fail_at_epoch,
    )
    emb = model.item_embeddings()
    emb.save(out / "embeddings")
    model.save_word2vec_format(out / "item2vec.w2v")
    write_json(
        out / "metrics.json",
        {
            "train_seconds": model.train_seconds,
            "epochs": model.history,
            "dropped": corpus.dropped,
            "workers": ray_cfg.workers,
            "sync": sync,
            "syncs_per_epoch": syncs_per_epoch,
            "checkpoint": str(last),
        },
    )
    log.info(
        "item2vec: %d items, dim %d, %.1fs, checkpoint %s -> %s",
        len(emb),
        emb.dim,
        model.train_seconds,
        last.name,
        out,
    )
    return out


def fit_corpus(
    corpus,
    i2v: Item2VecConfig,
    ray_cfg: RayTrainConfig,
    storage: Path,
    sync: str = "mean",
    syncs_per_epoch: int = 1,
    fail_at_epoch: int | None = None,
):
    """Run :func:`train_loop` on a prebuilt Corpus (in-process or on Ray); return ``(Item2Vec, checkpoint)``.

    Checkpoints go to ``<storage>/<ray_cfg.name or "item2vec">/``; the model is
    rebuilt from the last one (``model.history`` holds every epoch, resumed ones included).
    """
    from recemb.models.item2vec.model import Item2Vec

    if sync not in SYNC_MODES:
        raise ConfigError(f"item2vec sync={sync!r}: expected one of {SYNC_MODES}")
    if syncs_per_epoch < 1:
        raise ConfigError(f"item2vec syncs_per_epoch={syncs_per_epoch}: must be >= 1")
    if ray_cfg.use_gpu and i2v.backend == "numba":
        raise ConfigError("ray.use_gpu=true but item2vec.backend=numba (CPU only); set item2vec.backend=auto")
    if ray_cfg.use_gpu and ray_cfg.workers == 0:
        raise ConfigError("ray.use_gpu needs ray.workers >= 1; in-process, set item2vec.device=cuda instead")
    storage = Path(storage).resolve()
    name = ray_cfg.name or "item2vec"
    experiment = storage / name
    corpus_dir = storage / f"{name}.corpus"
    digest = write_corpus(corpus, corpus_dir)
    _discard_stale(experiment, ray_cfg, i2v, digest)

    loop_config = {
        "item2vec": i2v.model_dump(mode="json"),
        "corpus_dir": str(corpus_dir),
        "experiment_dir": str(experiment),
        "keep_checkpoints": ray_cfg.keep_checkpoints,
        "sync": sync,
        "syncs_per_epoch": syncs_per_epoch,
        "use_gpu": ray_cfg.use_gpu,
        # In a worker, item2vec.threads = 0 ("all cores") would oversubscribe: use its CPU share.
        "threads": i2v.threads or (ray_cfg.threads() if ray_cfg.workers else 0),
        "fail_at_epoch": fail_at_epoch,
        "fault_marker": str(experiment / ".fault_injected"),
        "progress_file": str(storage / f"{name}.progress.log") if ray_cfg.workers else None,
    }
    t0 = time.perf_counter()
    if ray_cfg.workers == 0:
        _run_in_process(loop_config, ray_cfg.max_failures)
    else:
        _run_on_ray(loop_config, ray_cfg, name, storage)
    seconds = time.perf_counter() - t0

    last = latest_checkpoint(experiment)
    if last is None:
        raise RecembError(f"item2vec: the run finished without a checkpoint in {experiment}")
    syn0, _, vocab, state = load_checkpoint(last)
    model = Item2Vec.from_state(
        Item2VecConfig.model_validate(state["config"]),
        vocab,
        syn0,
        history=state["history"],
        backend=f"ray x{state['workers']}",
        dropped=corpus.dropped,
    )
    model.train_seconds = seconds
    return model, last


def _discard_stale(experiment: Path, ray_cfg: RayTrainConfig, cfg: Item2VecConfig, digest: str) -> None:
    """Remove checkpoints that must not be resumed (ray.resume=false, other corpus or settings)."""
    if not experiment.exists():
        return
    if not ray_cfg.resume:
        log.info("item2vec: ray.resume=false, discarding %s", experiment)
        shutil.rmtree(experiment)
        return
    last = latest_checkpoint(experiment)
    if last is None:
        return
    state = json.loads((last / "state.json").read_text())
    why = resumable(state, cfg, digest)
    if why:
        log.warning("item2vec: not resuming from %s: %s; starting afresh", last, why)
        shutil.rmtree(experiment)


def _run_in_process(loop_config: dict[str, Any], max_failures: int) -> None:
    """The loop in this process, restarted from its last checkpoint on failure like Ray would."""
    failures = 0
    while True:
        try:
            train_loop(loop_config)
            return
        except RecembError:
            raise
        except Exception as e:  # noqa: BLE001 - any crash of the loop is a worker failure
            failures += 1
            if max_failures != -1 and failures > max_failures:
                raise RecembError(
                    f"item2vec training failed ({failures} failure(s), ray.max_failures={max_failures}): {e}"
                ) from e
            log.warning("item2vec: training failed (%s); resuming from the last checkpoint", e)


def _run_on_ray(loop_config: dict[str, Any], ray_cfg: RayTrainConfig, name: str, storage: Path) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from recemb.ray_runtime import ray_session

    resources = {"CPU": ray_cfg.cpus_per_worker} | ({"GPU": 1} if ray_cfg.use_gpu else {})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=ray_cfg.workers, use_gpu=ray_cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=ray_cfg.keep_checkpoints),
        ),
    )
    with ray_session(), _FollowProgress(loop_config["progress_file"]):
        try:
            trainer.fit()
        except Exception as e:  # Ray's TrainingFailedError wraps the worker's exception
            raise RecembError(f"item2vec Ray Train run {storage / name} failed: {e}") from e
