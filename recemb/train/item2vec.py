"""Item2vec training: ``train_loop`` on every worker, and the ``train item2vec`` driver.

- :func:`train_loop` (``config: dict``) runs unchanged in-process
  (``ray.workers = 0``) and in each ``TorchTrainer`` worker
  (:mod:`recemb.train.runner`). Worker ``r`` of ``W`` trains the CPU (numba
  Hogwild) or torch kernel on the ``r``-th of ``W`` contiguous, event-balanced
  shards of the session corpus with the epoch loop that ``Item2Vec.fit`` also
  runs (:func:`recemb.models.item2vec.epochs.train_epochs`, which explains the
  table synchronisation). Rank 0 writes a checkpoint after every epoch; a
  (re)started loop resumes from the newest one at the next epoch.
- :func:`train_item2vec` (the driver) builds the corpus once, writes it
  beside the checkpoints for the workers to memory-map, runs the loop, and
  writes ``<run>/item2vec/``: ``embeddings/`` (EmbeddingSet), ``item2vec.w2v``
  (word2vec text, readable by gensim) and ``metrics.json``. These vectors are
  trained on all events, for export and serving; the evaluation tables fit
  item2vec on each protocol's train split instead (recemb.eval.model_scorer).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recemb.data.vocab import Vocab
from recemb.errors import ConfigError, RecembError
from recemb.io import atomic_dir, write_json
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.item2vec.corpus import Corpus
from recemb.models.item2vec.epochs import EpochRunner, check_sync, train_epochs
from recemb.models.item2vec.model import Item2Vec
from recemb.models.item2vec.sgns_cpu import shard_bounds
from recemb.train.checkpoints import latest_checkpoint
from recemb.train.ray_config import RayTrainConfig
from recemb.train.runner import discard_checkpoints, experiment_dir, run_training, worker_context

log = logging.getLogger("recemb.item2vec")

SCHEMA_VERSION = 1
# Settings that change what a checkpoint's vectors mean; a checkpoint trained
# with other values is not resumed. (epochs may grow: that is how a run is extended.)
MODEL_KEYS = (
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
def write_corpus(corpus: Corpus, out_dir: Path) -> str:
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
class Shard:
    """One worker's contiguous share of the corpus (memory-mapped from :func:`write_corpus`'s files)."""

    vocab: Vocab
    indptr: np.ndarray  # [S_r + 1] int64, rebased to 0
    indices: np.ndarray  # [E_r] int32
    n_events_total: int
    digest: str

    @classmethod
    def load(cls, corpus_dir: Path, rank: int, world: int) -> Shard:
        indptr = np.load(corpus_dir / "indptr.npy", mmap_mode="r")
        indices = np.load(corpus_dir / "indices.npy", mmap_mode="r")
        meta = json.loads((corpus_dir / "corpus.json").read_text())
        bounds = shard_bounds(np.asarray(indptr), world)
        s0, s1 = int(bounds[rank]), int(bounds[rank + 1])
        e0, e1 = int(indptr[s0]), int(indptr[s1])
        return cls(
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


def resumable(state: dict[str, Any], cfg: Item2VecConfig, digest: str) -> str | None:
    """Why a checkpoint's ``state`` cannot continue training ``cfg`` on corpus ``digest`` (None if it can)."""
    if state.get("corpus_sha256") != digest:
        return "it was trained on a different corpus (the events or min_count changed)"
    old = state.get("config", {})
    diff = [f"{k}={old.get(k)!r} (now {getattr(cfg, k)!r})" for k in MODEL_KEYS if old.get(k) != getattr(cfg, k)]
    if diff:
        return "it was trained with " + ", ".join(diff)
    return None


# ----------------------------------------------------------------- the loop
def train_loop(config: dict[str, Any]) -> None:
    """Train item2vec on this worker's shard; checkpoint every epoch (rank 0); resume from the newest.

    ``config`` (JSON-like, built by :func:`fit_corpus`; the runner adds its own keys):
        item2vec: ``Item2VecConfig`` fields; corpus_dir: :func:`write_corpus` output;
        sync ("mean" | "sum"), syncs_per_epoch (>= 1).
    """
    ctx = worker_context(config)
    i2v = dict(config["item2vec"])
    if ctx.threads and not i2v.get("threads"):
        i2v["threads"] = ctx.threads
    if ctx.device:
        i2v["device"], i2v["backend"] = ctx.device, "torch"
    cfg = Item2VecConfig.model_validate(i2v)
    shard = Shard.load(Path(config["corpus_dir"]), ctx.rank, ctx.world_size)

    start, history, syn0, syn1 = 0, [], None, None
    ckpt = ctx.latest_checkpoint()
    if ckpt is not None:
        syn0, syn1, vocab, state = load_checkpoint(ckpt)
        why = resumable(state, cfg, shard.digest)
        if why or vocab.ids.tolist() != shard.vocab.ids.tolist():
            raise RecembError(f"checkpoint {ckpt} cannot be resumed: {why or 'its vocabulary differs'}")
        start, history = int(state["epoch"]), list(state["history"])
        if ctx.rank == 0:
            log.info("item2vec: resuming from %s at epoch %d/%d", ckpt.name, start + 1, cfg.epochs)
    runner = EpochRunner(cfg, shard.vocab.counts, syn0, syn1)
    sync, syncs_per_epoch = config.get("sync", "mean"), int(config.get("syncs_per_epoch", 1))

    def write(out: Path, history: list[dict[str, Any]]) -> None:
        state = {
            "epoch": history[-1]["epoch"],
            "config": cfg.model_dump(mode="json"),
            "corpus_sha256": shard.digest,
            "history": history,
            "workers": ctx.world_size,
            "sync": sync,
            "syncs_per_epoch": syncs_per_epoch,
        }
        save_checkpoint(out, *runner.arrays(), shard.vocab, state)

    train_epochs(
        ctx,
        runner,
        shard.indptr,
        shard.indices,
        shard.n_events_total,
        start=start,
        history=history,
        sync=sync,
        syncs_per_epoch=syncs_per_epoch,
        write=write,
    )


# ----------------------------------------------------------------- the driver
def train_item2vec(
    item2vec: Item2VecConfig,
    ray: RayTrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    sync: str = "mean",
    syncs_per_epoch: int = 1,
) -> Path:
    """Train on ``data_dir``'s prepared events through :func:`train_loop`; return ``<run_dir>/item2vec``.

    Args:
        item2vec: model settings (the ``item2vec:`` section).
        ray: execution settings (the ``ray:`` section; ``workers = 0``: in this process).
        data_dir: the prepared canonical tables.
        run_dir: the run's output directory; checkpoints go to ``ray.storage(run_dir)``.
        sync, syncs_per_epoch: table synchronisation between workers (recemb.models.item2vec.epochs).
    """
    from recemb.data.dataset import load_dataset
    from recemb.models.item2vec.corpus import build_corpus

    out = Path(run_dir) / "item2vec"
    corpus = build_corpus(load_dataset(data_dir).events, min_count=item2vec.min_count)
    model, last = fit_corpus(
        corpus, item2vec, ray, experiment_dir(ray, run_dir, "item2vec"), sync=sync, syncs_per_epoch=syncs_per_epoch
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
            "workers": ray.workers,
            "sync": sync,
            "syncs_per_epoch": syncs_per_epoch,
            "checkpoint": str(last),
        },
    )
    log.info(
        "item2vec: %d items, dim %d, %.1fs, checkpoint %s -> %s", len(emb), emb.dim, model.train_seconds, last.name, out
    )
    return out


def fit_corpus(
    corpus: Corpus,
    i2v: Item2VecConfig,
    ray: RayTrainConfig,
    experiment: Path,
    sync: str = "mean",
    syncs_per_epoch: int = 1,
) -> tuple[Item2Vec, Path]:
    """Run :func:`train_loop` on a prebuilt Corpus (in-process or on Ray); return ``(Item2Vec, checkpoint)``.

    Checkpoints go to ``experiment`` (the corpus files beside it, ``<experiment>.corpus``); the
    model is rebuilt from the last one (``model.history`` holds every epoch, resumed ones included).
    """
    check_sync(sync, syncs_per_epoch)
    if ray.use_gpu and i2v.backend == "numba":
        raise ConfigError("ray.use_gpu=true but item2vec.backend=numba (CPU only); set item2vec.backend=auto")
    if ray.use_gpu and ray.workers == 0:
        raise ConfigError("ray.use_gpu needs ray.workers >= 1; in-process, set item2vec.device=cuda instead")
    experiment = Path(experiment).resolve()
    corpus_dir = experiment.with_name(f"{experiment.name}.corpus")
    digest = write_corpus(corpus, corpus_dir)
    if ray.resume:
        _discard_stale(experiment, i2v, digest)
    loop_config = {
        "item2vec": i2v.model_dump(mode="json"),
        "corpus_dir": str(corpus_dir),
        "sync": sync,
        "syncs_per_epoch": syncs_per_epoch,
    }
    t0 = time.perf_counter()
    last = run_training(train_loop, loop_config, ray, experiment)
    seconds = time.perf_counter() - t0
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


def _discard_stale(experiment: Path, cfg: Item2VecConfig, digest: str) -> None:
    """Remove checkpoints that must not be resumed (another corpus or other settings)."""
    last = latest_checkpoint(experiment)
    if last is None:
        return
    state = json.loads((last / "state.json").read_text())
    why = resumable(state, cfg, digest)
    if why:
        log.warning("item2vec: not resuming from %s: %s; starting afresh", last, why)
        discard_checkpoints(experiment, why)
