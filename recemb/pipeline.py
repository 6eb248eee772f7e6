"""`recemb pipeline`: run every stage the config enables, in order, skipping what is up to date.

The stages themselves live in recemb.stages (one module each, training
stages from the model registry); this module only orders them and keeps
their fingerprints. After a stage succeeds, ``<run>/stages/<stage>.json``
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
from typing import Any

from recemb.config import PipelineConfig, config_to_dict
from recemb.errors import ConfigError
from recemb.io import write_json
from recemb.stages import STAGES
from recemb.stages.evaluate import check_eval_models

log = logging.getLogger(__name__)


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
    if "evaluate" in cfg.stages:
        check_eval_models(cfg)  # a misspelt eval.models entry fails now, not after the training stages
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
