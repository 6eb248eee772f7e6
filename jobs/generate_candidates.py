"""Batch candidate generation as a Ray job (DESIGN.md §5b).

    python -m jobs.generate_candidates --config configs/quickstart.yaml
    ray job submit --working-dir . -- \
        python -m jobs.generate_candidates --config configs/quickstart.yaml

Writes ``<run>/candidates/part-*.parquet``; a rerun after a crash resumes
where the job stopped. On a cluster the run directory must be on storage
that every node sees (workers write the parts themselves).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.common import run_job
from recemb.config import PipelineConfig


def main(argv: list[str] | None = None) -> int:
    from recemb.eval.holdout_queries import query_builder
    from recemb.retrieval.candidates import generate_candidates

    def body(cfg: PipelineConfig) -> Path:
        c = cfg.candidates
        queries = query_builder(c.holdout, cfg.data.sessionize.gap_minutes)
        return generate_candidates(cfg.run_dir, cfg.prepared_dir / "events.parquet", c, queries=queries)

    return run_job("Top-k candidates for every user, written to <run>/candidates.", body, argv)


if __name__ == "__main__":
    sys.exit(main())
