"""Sequence model as a Ray job: ``python -m jobs.train_sequence --config configs/yoochoose.yaml [--set ray.workers=2]``.

On a cluster: ``ray job submit --working-dir . -- python -m jobs.train_sequence --config ...``
(``ray.storage_path`` must then be storage every node sees). Writes
``<run>/sequence/`` (weights.pt, items.parquet, embeddings/, model.json,
metrics.json); with ``ray.workers`` >= 1 each worker trains on its share of
the windows under DistributedDataParallel (gloo on CPU, NCCL on GPU) and
checkpoints go under ``ray.storage_path`` (default ``<run>/ray``); a rerun
resumes from the last one.
"""

from __future__ import annotations

import sys

from jobs.train import main

if __name__ == "__main__":
    sys.exit(main(model="sequence"))
