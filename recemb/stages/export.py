"""The ``export`` stage: each EmbeddingSet -> a checked index (Annoy, HNSW or exact); events -> co-visitation."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage


def run_export(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from recemb.index.loading import describe
    from recemb.index.stage import export_run

    manifests = export_run(cfg.run_dir, cfg.export, cfg.prepared_dir / "events.parquet")
    for name, m in manifests.items():
        if m["kind"] == "covisit":
            print(
                f"exported {name}: {m['count']} items, top {m['top_m']} neighbours by {m['unit']}, "
                f"{m['pairs']} pairs in {m['build_seconds']}s -> {cfg.run_dir / 'index' / name}"
            )
            continue
        print(f"exported {name}: {m['count']} items, dim {m['dim']}, {describe(m)} -> {cfg.run_dir / 'index' / name}")
    return {"indexes": {name: str(cfg.run_dir / "index" / name) for name in manifests}}


STAGE = Stage(
    "export",
    run_export,
    ("export", "data"),
    "export the run's EmbeddingSets to Annoy indexes and the co-visitation table",
)
