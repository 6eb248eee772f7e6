"""`recemb pipeline`: run every stage the config enables, in order, skipping what is up to date.

A stage is a function ``(cfg, force) -> summary dict`` plus the config
sections it reads. After a stage succeeds, ``<run>/stages/<stage>.json``
records its fingerprint: a hash of its sections and of the fingerprints of
the stages before it in this pipeline (so a change upstream reruns
everything downstream). A rerun skips every stage whose fingerprint matches
its record; a stage that crashed has no record and runs again, resuming from
its own checkpoints where it has them (item2vec epochs, candidate partitions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recemb.config import PipelineConfig, config_to_dict
from recemb.errors import ConfigError
from recemb.io import write_json

log = logging.getLogger(__name__)


def stage_data(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.data.describe import describe, format_description
    from recemb.data.prepare import prepare_dataset

    out = prepare_dataset(cfg.data, cfg.prepared_dir, force=force)
    d = describe(out)
    print(format_description(d))
    return {"dir": str(out), "counts": d.get("counts", {})}


def stage_item2vec(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.train.item2vec import train_item2vec

    return {"dir": str(train_item2vec(cfg.item2vec, cfg.ray, cfg.prepared_dir, cfg.run_dir))}


def stage_two_tower(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.train.two_tower import train_two_tower

    section = cfg.two_tower
    out = train_two_tower(section, cfg.ray, cfg.prepared_dir, cfg.run_dir, cfg.content_cache_dir(section.content))
    return {"dir": str(out)}


def stage_content(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.train.content import train_content

    out = train_content(cfg.content, cfg.ray, cfg.prepared_dir, cfg.run_dir, cfg.content_cache_dir(cfg.content))
    return {"dir": str(out)}


def stage_export(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.index.stage import export_run

    manifests = export_run(cfg)
    for name, m in manifests.items():
        print(f"  {name}: {m['count']} items, recall@10 vs exact {m.get('recall_at_10')}")
    return {"indexes": {name: str(cfg.run_dir / "index" / name) for name in manifests}}


def stage_candidates(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.retrieval.candidates import generate_candidates

    return {"dir": str(generate_candidates(cfg, force=force))}


def stage_evaluate(cfg: PipelineConfig, force: bool) -> dict[str, Any]:
    from recemb.eval.evaluate import evaluate
    from recemb.eval.tables import format_tables

    print(format_tables(evaluate(cfg)))
    return {"metrics": str(cfg.run_dir / "eval" / "metrics.json")}


def stage_report(cfg: PipelineConfig, force: bool, timings: dict[str, Any] | None = None) -> dict[str, Any]:
    from recemb.report import run_report

    out = run_report(cfg, timings=timings)
    print(f"  report: {out['report']}")
    return {"report": str(out["report"]), "sections": out["sections"]}


@dataclass(frozen=True)
class Stage:
    run: Callable[[PipelineConfig, bool], dict[str, Any]]
    sections: tuple[str, ...]  # the config sections whose values decide its output


STAGES: dict[str, Stage] = {
    "data": Stage(stage_data, ("data",)),
    "item2vec": Stage(stage_item2vec, ("item2vec", "ray")),
    "two_tower": Stage(stage_two_tower, ("two_tower", "ray")),
    "content": Stage(stage_content, ("content",)),
    "export": Stage(stage_export, ("export",)),
    "candidates": Stage(stage_candidates, ("candidates",)),
    "evaluate": Stage(stage_evaluate, ("eval", "item2vec", "two_tower", "content")),
    "report": Stage(stage_report, ("report",)),
}


def fingerprint(cfg: PipelineConfig, name: str, upstream: str) -> str:
    """Hash of stage ``name``'s config sections and the ``upstream`` fingerprint."""
    tree = config_to_dict(cfg)
    payload = {"stage": name, "upstream": upstream, "sections": {s: tree[s] for s in STAGES[name].sections}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _record_path(cfg: PipelineConfig, name: str):
    return cfg.run_dir / "stages" / f"{name}.json"


def _is_done(cfg: PipelineConfig, name: str, fp: str) -> bool:
    path = _record_path(cfg, name)
    try:
        return json.loads(path.read_text()).get("fingerprint") == fp
    except (OSError, json.JSONDecodeError):
        return False


def run_pipeline(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    """Run ``cfg.stages`` in order, skipping up-to-date ones; write ``<run>/pipeline.json``."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; available: {list(STAGES)}")
    summary: dict[str, Any] = {}
    upstream = ""
    for name in cfg.stages:
        fp = fingerprint(cfg, name, upstream)
        upstream = fp
        if not force and _is_done(cfg, name, fp):
            print(f"== stage {name}: up to date, skipped", flush=True)
            summary[name] = {**json.loads(_record_path(cfg, name).read_text())["summary"], "skipped": True}
            continue
        print(f"== stage {name}", flush=True)
        t0 = time.perf_counter()
        # The report shows this run's stage timings, which pipeline.json only holds at the end.
        extra = {"timings": summary} if name == "report" else {}
        result = {**STAGES[name].run(cfg, force, **extra), "seconds": round(time.perf_counter() - t0, 2)}
        write_json(_record_path(cfg, name), {"fingerprint": fp, "finished": time.time(), "summary": result})
        summary[name] = {**result, "skipped": False}
        print(f"== stage {name}: done in {result['seconds']:.1f}s", flush=True)
    write_json(cfg.run_dir / "pipeline.json", {"config": config_to_dict(cfg), "stages": summary})
    print("== summary")
    for name, s in summary.items():
        note = " (up to date, skipped)" if s.get("skipped") else ""
        print(f"  {name:<10} {s['seconds']:>8.1f}s{note}")
    print(f"  run dir    {cfg.run_dir}")
    return summary
