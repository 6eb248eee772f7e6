"""Two-tower as a Ray job: ``python -m jobs.train_two_tower --config configs/ml-100k.yaml [--set ray.workers=2]``.

On a cluster: ``ray job submit --working-dir . -- python -m jobs.train_two_tower --config ...``
(``ray.storage_path`` must then be storage every node sees). Writes
``<run>/two_tower/`` (embeddings/, user_embeddings/, user_tower/, metrics.json);
with ``ray.workers`` >= 1 the towers are sharded across workers by
DistributedModelParallel (gloo on CPU, NCCL on GPU) and checkpoints go under
``ray.storage_path`` (default ``<run>/ray``); a rerun resumes from the last one.
"""

from __future__ import annotations

import sys

from jobs.common import run_job
from recemb.pipeline import stage_two_tower

if __name__ == "__main__":
    sys.exit(
        run_job(
            "Train the two-tower model on Ray Train (DMP-sharded, checkpointed)",
            lambda cfg: stage_two_tower(cfg, False)["dir"],
        )
    )
