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

from jobs.common import run_job


def main(argv: list[str] | None = None) -> int:
    from recemb.retrieval.candidates import generate_candidates

    return run_job("Top-k candidates for every user, written to <run>/candidates.", generate_candidates, argv)


if __name__ == "__main__":
    sys.exit(main())
