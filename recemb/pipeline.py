"""`recemb pipeline`: run every stage the config enables, in order.

Stages are small functions ``(cfg, force) -> summary dict``; the pipeline
runs those named in ``cfg.stages`` and prints one summary at the end. A stage
whose output is up to date for this config is skipped (the data stage checks
the recorded data config).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from recemb.config import PipelineConfig, config_to_dict
from recemb.errors import ConfigError
from recemb.io import write_json

log = logging.getLogger(__name__)


def stage_data(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.data.describe import describe, format_description
    from recemb.data.prepare import is_prepared, prepare_dataset

    out = cfg.prepared_dir
    skipped = not force and is_prepared(cfg.data, out)
    prepare_dataset(cfg.data, out, force=force)
    d = describe(out)
    print(format_description(d))
    return {"dir": str(out), "skipped": skipped, "counts": d.get("counts", {})}


def stage_candidates(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.retrieval.candidates import generate_candidates

    out = generate_candidates(cfg, force=force, log_fn=print)
    return {"dir": str(out)}


def stage_evaluate(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.eval.evaluate import evaluate
    from recemb.eval.tables import format_tables

    results = evaluate(cfg, log=lambda line: print(line, flush=True))
    print(format_tables(results))
    return {"metrics": str(cfg.run_dir / "eval" / "metrics.json")}


def stage_item2vec(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.train.item2vec import train_item2vec

    out = train_item2vec(cfg)
    return {"dir": str(out)}


def stage_export(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.index.stage import export_run

    manifests = export_run(cfg)
    for name, m in manifests.items():
        print(f"  {name}: {m['count']} items, recall@10 vs exact {m.get('recall_at_10')}")
    return {"indexes": {name: str(cfg.run_dir / "index" / name) for name in manifests}}


STAGES: dict[str, Callable[[PipelineConfig, bool], dict[str, Any]]] = {
    "data": stage_data,
    "item2vec": stage_item2vec,
    "export": stage_export,
    "candidates": stage_candidates,
    "evaluate": stage_evaluate,
}


def run_pipeline(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    """Run ``cfg.stages`` in order; write ``<run>/pipeline.json``; return the summaries."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; available: {list(STAGES)}")
    summary: dict[str, Any] = {}
    for name in cfg.stages:
        print(f"== stage {name}", flush=True)
        t0 = time.perf_counter()
        summary[name] = {**STAGES[name](cfg, force), "seconds": round(time.perf_counter() - t0, 2)}
    write_json(cfg.run_dir / "pipeline.json", {"config": config_to_dict(cfg), "stages": summary})
    print("== summary")
    for name, s in summary.items():
        note = " (up to date, skipped)" if s.get("skipped") else ""
        print(f"  {name:<10} {s['seconds']:>8.1f}s{note}")
    print(f"  run dir    {cfg.run_dir}")
    return summary
