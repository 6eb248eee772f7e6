"""Training checkpoints: one directory per epoch, on local disk or through Ray Train.

A checkpoint is a directory whose files the model chooses (item2vec: npy +
parquet + json; two-tower and content: a ``.pt`` state dict of tensors, read
with ``torch.load(weights_only=True)``). Both kinds live in an experiment
directory as ``checkpoint_epoch_NNNN/`` (Ray Train is given the same name),
so a run can resume from the other mode's checkpoints::

    <storage>/<name>/checkpoint_epoch_0003/...
    <storage>/<name>/checkpoint_epoch_0004/...

- :class:`LocalCheckpoints`: in-process; each epoch is written atomically
  (a temp dir renamed into place) and only the newest ``keep`` are kept.
- :class:`RayCheckpoints`: inside a ``TorchTrainer`` worker; rank 0 hands
  the directory to ``ray.train.report`` (Ray keeps ``num_to_keep``), a
  restarted worker gets it back from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recemb.io import atomic_dir

CKPT_PREFIX = "checkpoint_epoch_"
_NAME = re.compile(rf"^{CKPT_PREFIX}(\d+)$")

# Writes one checkpoint's files into the directory it is given.
Writer = Callable[[Path], None]


def checkpoint_name(epoch: int) -> str:
    """``checkpoint_epoch_0003`` for 1-based ``epoch`` 3."""
    return f"{CKPT_PREFIX}{epoch:04d}"


def latest_checkpoint(experiment_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch_NNNN`` directory with the highest epoch under ``experiment_dir``, or None.

    Temp directories of a write in progress (``.checkpoint_epoch_0003.xyz.tmp``) do not match.
    """
    best, best_epoch = None, -1
    root = Path(experiment_dir)
    if not root.is_dir():
        return None
    for d in root.iterdir():
        m = _NAME.match(d.name)
        if m and d.is_dir() and int(m.group(1)) > best_epoch:
            best, best_epoch = d, int(m.group(1))
    return best


class LocalCheckpoints:
    """Checkpoints in ``experiment_dir`` on this machine; the newest ``keep`` are kept."""

    def __init__(self, experiment_dir: str | Path, keep: int = 2):
        self.dir, self.keep = Path(experiment_dir), keep

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def save(self, epoch: int, metrics: dict[str, Any], write: Writer | None) -> None:
        """Write epoch ``epoch``'s checkpoint with ``write`` (None: nothing to write on this rank)."""
        if write is None:
            return
        with atomic_dir(self.dir / checkpoint_name(epoch)) as tmp:
            write(tmp)
        done = sorted(d for d in self.dir.iterdir() if _NAME.match(d.name))
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


class RayCheckpoints:
    """Ray Train's checkpoints, from inside a ``TorchTrainer`` worker (Ray owns storage and keep-N)."""

    def __init__(self) -> None:
        import ray.train

        self._restored = ray.train.get_checkpoint()
        self._tmp: tempfile.TemporaryDirectory | None = None

    def latest(self) -> Path | None:
        """The checkpoint this (re)started run resumes from, as a local directory, or None."""
        if self._restored is None:
            return None
        if self._tmp is None:
            # Copied out (downloaded from remote storage) once; removed with this object.
            self._tmp = tempfile.TemporaryDirectory(prefix="recemb-ckpt-")
            self._restored.to_directory(self._tmp.name)
        return Path(self._tmp.name)

    def save(self, epoch: int, metrics: dict[str, Any], write: Writer | None) -> None:
        """Report ``metrics``; rank 0 (``write`` given) attaches the checkpoint. Every rank must call this."""
        import ray.train

        name = checkpoint_name(epoch)
        if write is None:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        with tempfile.TemporaryDirectory(prefix="recemb-ckpt-") as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
