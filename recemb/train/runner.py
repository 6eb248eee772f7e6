"""One way to run a training loop: in this process, or on Ray Train's ``TorchTrainer``.

Every model's loop is a plain ``train_loop(config: dict)`` (DESIGN.md §4). It
asks :func:`worker_context` for a :class:`WorkerContext` (rank, world size,
device, checkpoints) and never needs to know where it runs:

- ``ray.workers == 0``: :func:`run_training` calls the loop here, with
  :class:`~recemb.train.checkpoints.LocalCheckpoints` in the experiment
  directory, and on a crash calls it again (it resumes from the last
  checkpoint) up to ``ray.max_failures`` times, as Ray would.
- ``ray.workers = N``: N ``TorchTrainer`` workers (gloo on CPU, NCCL on GPU),
  ``FailureConfig(max_failures)``, ``CheckpointConfig(num_to_keep)``; rank 0
  reports checkpoints. Worker logs are not forwarded to a locally started
  driver, so rank 0 also appends its epoch lines to a progress file that a
  driver thread (:class:`ProgressFollower`) logs.

Either way checkpoints land in ``<storage>/<name>/checkpoint_epoch_NNNN/``,
and :meth:`WorkerContext.epochs` is the ``train.epoch`` fault-injection
point (:mod:`recemb.testing.faults`), so every model gets worker-failure
tests for free.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recemb.data.dataset import events_digest
from recemb.errors import DataValidationError, RecembError
from recemb.progress import Progress
from recemb.testing import faults
from recemb.train.checkpoints import LocalCheckpoints, RayCheckpoints, Writer, latest_checkpoint
from recemb.train.ray_config import RayTrainConfig

log = logging.getLogger("recemb.train")

TrainLoop = Callable[[dict[str, Any]], Any]


@dataclass
class WorkerContext:
    """What a loop needs to know about the process it runs in.

    Attributes:
        rank, world_size: this worker among the data-parallel ones (0, 1 in-process).
        device: the device Ray assigned this worker (``"cuda:0"``) with ``ray.use_gpu``;
            None lets the model's own ``device`` setting decide.
        threads: compute threads for this worker (0: the model's own setting).
        checkpoints: where to resume from and report to; None: no checkpoints (a plain ``fit``).
        progress_file: rank 0 appends its epoch lines here for the driver (Ray runs only).
        on_epoch: ``(epoch, snapshot)`` after each epoch on rank 0 (:meth:`epoch_done`).
    """

    rank: int = 0
    world_size: int = 1
    device: str | None = None
    threads: int = 0
    checkpoints: LocalCheckpoints | RayCheckpoints | None = None
    progress_file: str | None = None
    on_epoch: Callable[[int, Callable[[], Any]], None] | None = None

    def epochs(self, start: int, stop: int) -> Iterator[int]:
        """0-based epochs ``start .. stop-1``; before each, the ``train.epoch`` fault point (1-based epoch)."""
        for epoch in range(start, stop):
            faults.check("train.epoch", epoch=epoch + 1, rank=self.rank)
            yield epoch

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint directory to resume from, or None to start afresh."""
        return self.checkpoints.latest() if self.checkpoints is not None else None

    def report(self, epoch: int, metrics: dict[str, Any], write: Writer) -> None:
        """End of 1-based ``epoch``: rank 0 writes a checkpoint with ``write``. Collective under Ray."""
        if self.checkpoints is not None:
            self.checkpoints.save(epoch, metrics, write if self.rank == 0 else None)

    def epoch_done(self, epoch: int, snapshot: Callable[[], Any]) -> None:
        """End of 1-based ``epoch``: hand ``snapshot`` (``() -> the model as trained so far``) to ``on_epoch``.

        Rank 0 only. The observer (a tuning trial scoring its validation split,
        recemb.tune) calls ``snapshot`` only when it wants the model, so a plain
        fit pays nothing for it.
        """
        if self.on_epoch is not None and self.rank == 0:
            self.on_epoch(epoch, snapshot)

    def note(self, progress: Progress, line: str) -> None:
        """Show an epoch line (rank 0), and hand it to the driver through the progress file."""
        if self.rank != 0:
            return
        progress.note(line)
        if self.progress_file:
            with open(self.progress_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def worker_context(config: dict[str, Any]) -> WorkerContext:
    """The context of this process: a Ray Train worker's, or the in-process one from ``config``.

    ``config`` keys set by :func:`run_training`: ``experiment_dir``, ``keep_checkpoints``,
    ``use_gpu``, ``threads``, ``progress_file``. Without ``experiment_dir`` (in-process) no
    checkpoints are written.
    """
    threads = int(config.get("threads") or 0)
    if not in_ray_train_worker():
        exp = config.get("experiment_dir")
        ckpts = LocalCheckpoints(exp, config.get("keep_checkpoints", 2)) if exp else None
        return WorkerContext(threads=threads, checkpoints=ckpts)
    import ray.train

    ctx = ray.train.get_context()
    device = None
    if config.get("use_gpu"):
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    return WorkerContext(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=device,
        threads=threads,
        checkpoints=RayCheckpoints(),
        progress_file=config.get("progress_file"),
    )


def in_ray_train_worker() -> bool:
    """True inside a ``TorchTrainer`` worker."""
    if "ray.train" not in sys.modules:  # a Ray Train worker has always imported it
        return False
    import ray.train

    try:
        ray.train.get_context()
        return True
    except RuntimeError:
        return False


def experiment_dir(ray: RayTrainConfig, run_dir: str | Path, default_name: str) -> Path:
    """``<storage>/<ray.name or default_name>``: the checkpoints of both run modes."""
    return ray.storage(Path(run_dir)) / (ray.name or default_name)


def discard_checkpoints(experiment: Path, why: str) -> None:
    """Remove an experiment's checkpoints so the next run starts afresh (logged with ``why``)."""
    if experiment.exists():
        log.info("%s: %s, discarding %s", experiment.name, why, experiment)
        shutil.rmtree(experiment)


def run_training(train_loop: TrainLoop, config: dict[str, Any], ray: RayTrainConfig, experiment: Path) -> Path | None:
    """Run ``train_loop(config)`` as ``ray`` says, checkpointing into ``experiment``; return its last checkpoint.

    ``config`` must be JSON-like (it travels to Ray workers); the runner adds the keys
    :func:`worker_context` reads. ``ray.resume = false`` discards old checkpoints first.
    """
    experiment = Path(experiment).resolve()
    if not ray.resume:
        discard_checkpoints(experiment, "ray.resume=false")
    progress_file = experiment.with_name(f"{experiment.name}.progress.log")
    config = {
        **config,
        "experiment_dir": str(experiment),
        "keep_checkpoints": ray.keep_checkpoints,
        "use_gpu": ray.use_gpu,
        # In a worker, "all cores" would oversubscribe the machine: use the worker's CPU share.
        "threads": ray.threads() if ray.workers else 0,
        "progress_file": str(progress_file) if ray.workers else None,
    }
    if ray.workers == 0:
        _run_in_process(train_loop, config, ray.max_failures, experiment.name)
    else:
        _run_on_ray(train_loop, config, ray, experiment)
    return latest_checkpoint(experiment)


def _run_in_process(train_loop: TrainLoop, config: dict[str, Any], max_failures: int, name: str) -> None:
    """The loop in this process, restarted from its last checkpoint on failure like Ray would."""
    failures = 0
    while True:
        try:
            train_loop(config)
            return
        except RecembError:
            raise  # a setting or data problem: a retry would fail the same way
        except Exception as e:  # noqa: BLE001 - any crash of the loop is a worker failure
            failures += 1
            if max_failures != -1 and failures > max_failures:
                raise RecembError(
                    f"{name} training failed ({failures} failure(s), ray.max_failures={max_failures}): {e}"
                ) from e
            log.warning("%s: training failed (%s); resuming from the last checkpoint", name, e)


def _worker_entry(job: dict[str, Any]) -> Any:
    """What each TorchTrainer worker runs: the driver's fault rules (see faults.env), then the loop."""
    os.environ.update(job["env"])
    return job["loop"](job["config"])


def _run_on_ray(train_loop: TrainLoop, config: dict[str, Any], ray: RayTrainConfig, experiment: Path) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recemb.ray_runtime import ray_session

    resources = {"CPU": ray.cpus_per_worker} | ({"GPU": 1} if ray.use_gpu else {})
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"loop": train_loop, "config": config, "env": faults.env()},
        scaling_config=ScalingConfig(num_workers=ray.workers, use_gpu=ray.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            failure_config=FailureConfig(max_failures=ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=ray.keep_checkpoints),
        ),
    )
    with ray_session(), ProgressFollower(Path(config["progress_file"])):
        try:
            trainer.fit()
        except Exception as e:  # Ray's TrainingFailedError wraps the worker's exception
            raise RecembError(f"{experiment.name} Ray Train run {experiment} failed: {e}") from e


class ProgressFollower:
    """``with ProgressFollower(path):`` - a driver thread that logs each new line of the progress file."""

    def __init__(self, path: Path, interval_s: float = 0.5):
        self.path, self.interval_s = Path(path), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def __enter__(self) -> ProgressFollower:
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


def in_child_process(fn: Callable[[dict[str, Any]], dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """``fn(config)`` in a fresh (spawned) process, and its result: what ``fn`` loads is freed with it.

    The jobs prepare their training inputs this way (the events are read, turned into
    examples or windows, written to a store and gone), so the driver never holds them.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, config).result()


def ensure_prepared(
    store: Path,
    data_dir: Path,
    settings: dict[str, Any],
    read_meta: Callable[[Path], dict[str, Any]],
    prepare: Callable[[dict[str, Any]], dict[str, Any]],
    job: dict[str, Any],
) -> tuple[dict[str, Any], bool]:
    """A job's prepared inputs: ``(store.json, reused)``.

    ``store`` is reused when its ``store.json`` (``read_meta``; a DataValidationError
    means none) names these events (their sha256) and ``settings``; otherwise
    ``prepare(job + {store, events_sha256})`` writes it in a child process.
    """
    digest = events_digest(data_dir)
    try:
        meta = read_meta(store)
        if meta.get("events_sha256") == digest and meta.get("settings") == settings:
            return meta, True
    except DataValidationError:
        pass
    return in_child_process(prepare, {**job, "store": str(store), "events_sha256": digest}), False
