"""The whole pipeline as one Ray job: ``python -m jobs.pipeline --config configs/quickstart.yaml``.

On a cluster: ``ray job submit --working-dir . -- python -m jobs.pipeline --config ...``.
The driver joins the cluster; each stage then uses it as it would locally
(Ray Train workers for ``ray.workers > 0``, Ray Data workers for the
candidates). Stages already done for this config are skipped, so
resubmitting after a failure continues where the last run stopped.
"""

from __future__ import annotations

import sys

from jobs.common import run_job
from recemb.pipeline import run_pipeline

if __name__ == "__main__":
    sys.exit(run_job("Run every stage the config enables (skips up-to-date stages)", run_pipeline))
