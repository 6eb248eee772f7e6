"""The ``data`` stage: the configured source -> canonical Parquet tables in ``<run>/data``."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage


def run_data(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from recemb.data.describe import describe, format_description
    from recemb.data.prepare import prepare_dataset

    out = prepare_dataset(cfg.data, cfg.prepared_dir, force=force)
    d = describe(out)
    print(format_description(d))
    return {"dir": str(out), "counts": d.get("counts", {})}


STAGE = Stage("data", run_data, ("data",), "prepare the configured dataset as canonical tables")
