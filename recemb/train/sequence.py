"""Sequence-model training on Ray: ``train_loop`` (one worker) and the ``train sequence`` driver.

- :func:`train_sequence` (``recemb train sequence``) first cuts the events
  into training windows in a child process and writes them to a window store
  (recemb.models.sequence.window_store, ``<storage>/sequence.windows``),
  reused while the events file and the window settings stay; then it runs
  the loop through :func:`~recemb.train.runner.run_training` and writes
  ``<run>/sequence/``: the saved model (``SequenceModel.save``: weights, item
  vocabulary, ``embeddings/``) and ``metrics.json``.
- :func:`train_loop` (``config: dict``) is what each ``TorchTrainer`` worker
  runs: it loads the window store (never the events) and calls
  :func:`recemb.models.sequence.fit.fit_sequence`, the loop ``SequenceModel.fit``
  also runs (the checkpoint layout is described there).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError, RecembError
from recemb.io import write_json
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.fit import fit_sequence, resume_problem, training_data
from recemb.models.sequence.model import SequenceModel
from recemb.models.sequence.window_store import load_window_store, read_store_meta, window_settings, write_window_store
from recemb.train.checkpoints import latest_checkpoint
from recemb.train.ray_config import RayTrainConfig
from recemb.train.runner import discard_checkpoints, ensure_prepared, experiment_dir, run_training, worker_context

log = logging.getLogger("recemb.sequence")


# ----------------------------------------------------------------- Ray Train
def train_loop(config: dict[str, Any]) -> None:
    """One worker: load the window store and run :func:`fit_sequence` (``config``: sequence, store)."""
    ctx = worker_context(config)
    fit_sequence(SequenceConfig.model_validate(config["sequence"]), load_window_store(config["store"]), ctx)


def prepare_windows(config: dict[str, Any]) -> dict[str, Any]:
    """Events -> a window store; run in a child process (``config``: sequence, data_dir, store, events_sha256)."""
    from recemb.data.dataset import load_dataset

    section = SequenceConfig.model_validate(config["sequence"])
    ds = load_dataset(config["data_dir"])
    data = training_data(section, ds.events, items=ds.items)
    meta = {"events_sha256": config["events_sha256"], "settings": window_settings(section)}
    write_window_store(config["store"], data, meta)
    return read_store_meta(config["store"])


def ensure_window_store(config: SequenceConfig, data_dir: Path, store: Path) -> dict[str, Any]:
    """``store.json`` of ``store``, prepared in a child process unless it holds these events' windows
    for these settings."""
    t0 = time.perf_counter()
    job = {"sequence": config.model_dump(mode="json"), "data_dir": str(data_dir)}
    meta, reused = ensure_prepared(store, data_dir, window_settings(config), read_store_meta, prepare_windows, job)
    if reused:
        log.info("sequence: reusing the window store %s", store)
    else:
        log.info("sequence: %d windows prepared in %.1fs (%s)", meta["windows"], time.perf_counter() - t0, store)
    return meta


def train_sequence(config: SequenceConfig, ray: RayTrainConfig, data_dir: str | Path, run_dir: str | Path) -> Path:
    """Train on ``data_dir``'s prepared events through :func:`train_loop`; return ``<run_dir>/sequence``.

    The saved model comes from the last checkpoint, so a run killed mid-way
    and started again resumes where it stopped (``ray.resume``).
    """
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "events.parquet").is_file():
        raise DataValidationError(
            f"{data_dir}: no prepared dataset; run `recemb pipeline CONFIG` (its data stage) "
            f"or `recemb data prepare NAME --out {data_dir}` first"
        )
    out = Path(run_dir) / "sequence"
    experiment = experiment_dir(ray, run_dir, "sequence")
    # Beside the checkpoints, not among them: ray.resume=false discards those, not the windows.
    store = experiment.with_name(f"{experiment.name}.windows").resolve()
    meta = ensure_window_store(config, data_dir, store)
    if ray.resume:
        _discard_stale(experiment, config, meta["digest"])
    t0 = time.perf_counter()
    last = run_training(
        train_loop,
        {"sequence": config.model_dump(mode="json"), "store": str(store)},
        ray,
        experiment,
    )
    if last is None:
        raise RecembError(f"sequence: the run finished without a checkpoint in {experiment}")
    state = json.loads((last / "state.json").read_text())
    weights = torch.load(last / "state.pt", map_location="cpu", weights_only=True)["net"]
    model = SequenceModel.from_state(config, Vocab.load(last / "items.parquet"), weights, state["history"])
    model.save(out)
    seconds = time.perf_counter() - t0
    write_json(
        out / "metrics.json",
        {"train_seconds": seconds, "epochs": state["history"], "workers": ray.workers, "checkpoint": str(last)},
    )
    log.info("sequence: %d items, %.1fs, checkpoint %s -> %s", len(model.vocab or []), seconds, last.name, out)
    return out


def _discard_stale(experiment: Path, config: SequenceConfig, digest: str) -> None:
    """Remove checkpoints that must not be resumed (other events or other settings)."""
    last = latest_checkpoint(experiment)
    if last is None:
        return
    state_file = last / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    why = resume_problem(state, config, digest)
    if why:
        log.warning("sequence: not resuming from %s: %s; starting afresh", last, why)
        discard_checkpoints(experiment, why)
