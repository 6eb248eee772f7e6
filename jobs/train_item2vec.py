"""Item2vec as a Ray job: ``python -m jobs.train_item2vec --config configs/quickstart.yaml [--set ray.workers=2]``.

On a cluster: ``ray job submit --working-dir . -- python -m jobs.train_item2vec --config ...``
(``ray.storage_path`` must then be storage every node sees). Writes
``<run>/item2vec/`` (EmbeddingSet, word2vec text, metrics.json); checkpoints
under ``ray.storage_path`` (default ``<run>/ray``); a rerun with the same
``ray.name`` resumes from the last one.
"""

from __future__ import annotations

import sys

from jobs.common import run_job
from recemb.pipeline import stage_item2vec

if __name__ == "__main__":
    sys.exit(
        run_job(
            "Train item2vec on Ray Train (data-parallel, checkpointed)", lambda cfg: stage_item2vec(cfg, False)["dir"]
        )
    )
