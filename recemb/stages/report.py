"""The ``report`` stage: ``<run>/report.html`` and embedding-projector files."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage


def run_report_stage(cfg: PipelineConfig, force: bool = False, timings: dict[str, Any] | None = None) -> dict[str, Any]:
    from recemb.config import config_to_dict
    from recemb.report.html import run_report

    out = run_report(cfg.run_dir, cfg.prepared_dir, cfg.report, config=config_to_dict(cfg), timings=timings)
    print(f"report -> {out['report']}")
    for model, path in out["projector"].items():
        print(f"projector ({model}) -> {path}")
    return {"report": str(out["report"]), "sections": out["sections"]}


STAGE = Stage("report", run_report_stage, ("report",), "self-contained report.html of the run")
