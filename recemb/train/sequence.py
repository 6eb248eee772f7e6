"""Sequence-model training on Ray: ``train_loop`` (one worker) and the ``train sequence`` driver.

- :func:`train_loop` (``config: dict``) is what each ``TorchTrainer`` worker
  runs (recemb.train.runner): it reads the prepared events and calls
  :func:`recemb.models.sequence.fit.fit_sequence`, the loop ``SequenceModel.fit``
  also runs (the checkpoint layout is described there).
- :func:`train_sequence` (``recemb train sequence``) runs the loop through
  :func:`~recemb.train.runner.run_training` and writes ``<run>/sequence/``:
  the saved model (``SequenceModel.save``: weights, item vocabulary,
  ``embeddings/``) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from recemb.data.vocab import Vocab
from recemb.errors import RecembError
from recemb.io import write_json
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.fit import fit_sequence, resume_problem, training_data
from recemb.models.sequence.model import SequenceModel
from recemb.train.checkpoints import latest_checkpoint
from recemb.train.ray_config import RayTrainConfig
from recemb.train.runner import discard_checkpoints, experiment_dir, run_training, worker_context

log = logging.getLogger("recemb.sequence")


# ----------------------------------------------------------------- Ray Train
def train_loop(config: dict[str, Any]) -> None:
    """One worker: read the prepared events and run :func:`fit_sequence` (``config``: sequence, data_dir)."""
    from recemb.data.dataset import load_dataset

    ctx = worker_context(config)
    cfg = SequenceConfig.model_validate(config["sequence"])
    ds = load_dataset(config["data_dir"])
    fit_sequence(cfg, ds.events, ctx, items=ds.items)


def train_sequence(config: SequenceConfig, ray: RayTrainConfig, data_dir: str | Path, run_dir: str | Path) -> Path:
    """Train on ``data_dir``'s prepared events through :func:`train_loop`; return ``<run_dir>/sequence``.

    The saved model comes from the last checkpoint, so a run killed mid-way
    and started again resumes where it stopped (``ray.resume``).
    """
    from recemb.data.dataset import load_dataset

    out = Path(run_dir) / "sequence"
    experiment = experiment_dir(ray, run_dir, "sequence")
    if ray.resume:
        ds = load_dataset(data_dir)
        _discard_stale(experiment, config, training_data(config, ds.events, items=ds.items)[3])
    t0 = time.perf_counter()
    last = run_training(
        train_loop,
        {"sequence": config.model_dump(mode="json"), "data_dir": str(Path(data_dir).resolve())},
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
