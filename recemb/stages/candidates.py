"""The ``candidates`` stage: top-k candidates for every user (Ray Data) -> ``<run>/candidates/``."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage


def run_candidates(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from recemb.retrieval.candidates import generate_candidates

    out = generate_candidates(cfg, force=force)
    print(f"candidates -> {out}")
    return {"dir": str(out)}


STAGE = Stage("candidates", run_candidates, ("candidates",), "batch candidates for every user")
