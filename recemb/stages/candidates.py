"""The ``candidates`` stage: top-k candidates for every user (Ray Data) -> ``<run>/candidates/``."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage


def run_candidates(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from recemb.eval.holdout_queries import query_builder
    from recemb.retrieval.candidates import generate_candidates

    out = generate_candidates(
        cfg.run_dir,
        cfg.prepared_dir / "events.parquet",
        cfg.candidates,
        queries=query_builder(cfg.candidates.holdout, cfg.data.sessionize.gap_minutes),
        force=force,
    )
    print(f"candidates -> {out}")
    return {"dir": str(out)}


STAGE = Stage("candidates", run_candidates, ("candidates",), "batch candidates for every user")
