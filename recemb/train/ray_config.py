"""``RayTrainConfig``: the ``ray:`` section of a pipeline YAML (how a training stage runs on Ray Train).

Model-agnostic: item2vec and the two-tower job read the same section. It
only says where and how the loop runs; what the loop trains lives in the
model's own section.

    ray:
      workers: 2            # 0 = run the loop in this process, without Ray
      cpus_per_worker: 1    # fractional allowed (0.5: two workers per core)
      use_gpu: false
      max_failures: 1       # worker crashes survived, each resuming from the last checkpoint
      storage_path: null    # default <run>/ray; must be shared storage on a multi-node cluster
      name: null            # default: the model name (item2vec, two_tower)
      resume: true          # same name + storage_path resumes from the last checkpoint

Checkpoints are written every epoch (by rank 0) and are what the final
artifacts are built from.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from recemb.section import Section


class RayTrainConfig(Section):
    """Execution settings of a Ray Train job (``ray.train.torch.TorchTrainer``)."""

    workers: int = Field(0, ge=0)  # 0 = in-process, no Ray
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = Field(1.0, gt=0)  # Ray resource; also the worker's compute threads (floor, >= 1)
    max_failures: int = Field(0, ge=-1)  # -1 = retry forever
    storage_path: str | None = None  # default <run>/ray
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")  # default: the model's name
    resume: bool = True  # False: discard checkpoints of an earlier run with the same name
    keep_checkpoints: int = Field(2, ge=1)  # newest N kept on storage

    def storage(self, run_dir: Path) -> Path:
        """Absolute storage path (Ray Train needs one): the configured one, else ``<run_dir>/ray``."""
        return Path(self.storage_path or Path(run_dir) / "ray").resolve()

    def threads(self) -> int:
        """Compute threads per worker: ``floor(cpus_per_worker)``, at least 1."""
        return max(1, int(self.cpus_per_worker))
